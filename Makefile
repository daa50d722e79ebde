# Two commands a newcomer needs; each does its own set-up (tools/setup.sh).
.PHONY: run test bench setup
run:    ## curl inside a usernet namespace, against a server on host loopback
	tools/run.sh
test:   ## the whole test suite (unit + integration)
	tools/test.sh
bench:  ## benchmark tables: parser vs dpkt/scapy, then the whole path vs slirp4netns/pasta/veth (root)
	tools/bench.sh $(ARGS)
setup:
	tools/setup.sh

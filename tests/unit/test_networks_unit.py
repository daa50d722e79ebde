"""Named networks: the store (usernet/networks.py) and the daemon's hub of switches.

Files in a temporary directory; the hub is driven with real Gateways, no sockets.
"""

import ipaddress
import json

import pytest

from usernet import networks as nw
from usernet.networks import NetworkError, NetworkHub
from usernet.stack.config import NetConfig
from usernet.stack.gateway import Gateway


def test_create_picks_free_subnets_and_refuses_clashes(tmp_path):
    d = str(tmp_path / "networks")
    a, warn = nw.create(d, "app", routes=[])
    assert (a["subnet"], a["ipv6_prefix"], warn) == ("10.89.0.0/24", "fd89::/64", [])
    # A host route over 10.89.1.0/24 is skipped: a network never hides a host LAN.
    b, _ = nw.create(d, "Db", routes=[ipaddress.IPv4Network("10.89.1.0/24")])
    assert (b["name"], b["subnet"], b["ipv6_prefix"]) == ("db", "10.89.2.0/24", "fd89:0:0:1::/64")
    with pytest.raises(NetworkError, match="exists"):
        nw.create(d, "app", routes=[])
    with pytest.raises(NetworkError, match="overlaps network 'app'"):
        nw.create(d, "c", "10.89.0.0/16", routes=[])
    with pytest.raises(NetworkError, match="prefix length"):
        nw.create(d, "c", "10.77.0.0/30", routes=[])
    with pytest.raises(ValueError, match="DNS label"):
        nw.create(d, "bad/name", routes=[])
    c, warn = nw.create(d, "c", "192.168.5.0/24", routes=[ipaddress.IPv4Network("192.168.0.0/16")])
    assert "overlaps the host's route" in warn[0]
    assert [n["name"] for n in nw.list_networks(d)] == ["app", "c", "db"]
    assert json.load(open(f"{d}/db.json"))["subnet"] == "10.89.2.0/24"
    nw.remove(d, "db")
    with pytest.raises(NetworkError, match="no network 'db'"):
        nw.load(d, "db")
    with pytest.raises(NetworkError, match="no network"):
        nw.remove(d, "db")


def test_an_unreadable_network_file_is_one_line_with_the_fix(tmp_path):
    d = tmp_path / "networks"
    d.mkdir()
    (d / "x.json").write_text("{not json")
    with pytest.raises(NetworkError, match="network rm x"):
        nw.load(str(d), "x")
    assert nw.list_networks(str(d)) == []


def test_store_dir_is_beside_the_socket():
    assert nw.store_dir("/run/user/1000/usernet/daemon.sock") == "/run/user/1000/usernet/networks"


def _link(hub, network, name, lease=None, now=0.0):
    net, ip, cfg = hub.link_config(network, name, lease, NetConfig(), now=now)
    gw = Gateway(cfg)

    class Driver:
        vnet_hdr = True
        port = None

        def attach_port(self, port):
            self.port = port

    drv = Driver()
    port = hub.join(net, ip, gw, name, drv)
    assert drv.port is port
    return net, port


def test_lease_then_attach_gets_the_leased_address_and_name(tmp_path):
    d = str(tmp_path)
    nw.create(d, "app", routes=[])
    hub = NetworkHub(d)
    r = hub.lease("app", "web", now=0.0)
    assert r["config"]["guest_addr"] == "10.89.0.100" and r["config"]["dhcp_pool_size"] == 1
    assert r["config"]["dns_search"] == ["app"] and r["network"]["subnet"] == "10.89.0.0/24"
    with pytest.raises(NetworkError, match="taken"):
        hub.lease("app", "WEB", now=1.0)                 # the name is held by the lease
    with pytest.raises(NetworkError, match="another network or name"):
        hub.link_config("app", "other", r["lease"], NetConfig(), now=1.0)
    net, port = _link(hub, "app", "web", r["lease"], now=2.0)
    assert port.ip4 == bytes([10, 89, 0, 100]) and net.names["web"] is port
    assert port.gw.config.guest_str == "10.89.0.100" and port.gw.config.dns_str == "10.89.0.3"
    assert port.gw.local_names.network is net
    with pytest.raises(NetworkError, match="unknown or expired"):
        hub.link_config("app", "web", r["lease"], NetConfig(), now=3.0)
    # Without a lease (a container configured by DHCP): the next address at once.
    net2, port2 = _link(hub, "app", None, now=4.0)
    assert net2 is net and port2.ip4 == bytes([10, 89, 0, 101])
    assert hub.info() == [{"name": "app", "subnet": "10.89.0.0/24", "ipv6_prefix": "fd89::/64",
                           "links": 2, "macs": 0, "names": ["web"]}]


def test_unused_leases_expire_and_free_address_and_name(tmp_path):
    d = str(tmp_path)
    nw.create(d, "app", routes=[])
    hub = NetworkHub(d)
    r = hub.lease("app", "web", now=0.0)
    r2 = hub.lease("app", "db", now=nw.LEASE_TIMEOUT + 1)
    assert r2["config"]["guest_addr"] == "10.89.0.100"    # the expired lease's address again
    assert hub.lease("app", "web", now=nw.LEASE_TIMEOUT + 2)["config"]["guest_addr"] == \
        "10.89.0.101"
    with pytest.raises(NetworkError, match="unknown or expired"):
        hub.link_config("app", "web", r["lease"], NetConfig(), now=nw.LEASE_TIMEOUT + 3)


def test_leaving_frees_and_an_empty_network_is_reloaded(tmp_path):
    d = str(tmp_path)
    nw.create(d, "app", routes=[])
    hub = NetworkHub(d)
    net, port = _link(hub, "app", "web")
    hub.leave(net, port)
    assert hub.nets == {} and net.ports == [] and "web" not in net.names
    # rm + create with another subnet: the next link sees the new one.
    nw.remove(d, "app")
    nw.create(d, "app", "10.77.0.0/24", routes=[])
    net2, port2 = _link(hub, "app", "web")
    assert net2 is not net and port2.ip4 == bytes([10, 77, 0, 100])
    with pytest.raises(NetworkError, match="no network 'nope'"):
        hub.lease("nope", None)


def test_join_refusal_releases_the_address(tmp_path):
    d = str(tmp_path)
    nw.create(d, "app", routes=[])
    hub = NetworkHub(d)
    net, ip, cfg = hub.link_config("app", None, None, NetConfig())

    class Impaired:
        vnet_hdr = True

        def attach_port(self, port):
            raise ValueError("--impair is not supported on a link on a network")

    with pytest.raises(NetworkError, match="impair"):
        hub.join(net, ip, Gateway(cfg), None, Impaired())
    assert net.ports == [] and ip not in net.reserved4 and ip not in net.ip4


def test_a_cancelled_lease_frees_address_and_name_at_once(tmp_path):
    d = str(tmp_path)
    nw.create(d, "app", routes=[])
    hub = NetworkHub(d)
    r = hub.lease("app", "web", now=0.0)
    hub.cancel(r["lease"])
    assert hub.nets == {}                                 # nothing held: forgotten
    r2 = hub.lease("app", "web", now=1.0)
    assert r2["config"]["guest_addr"] == "10.89.0.100"
    _link(hub, "app", "web", r2["lease"], now=2.0)
    hub.cancel(r2["lease"])                               # used: nothing happens
    assert hub.nets["app"].names["web"].ip4 == bytes([10, 89, 0, 100])

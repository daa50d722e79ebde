/*
 * usernet-slirp4netns, the compiled front: make the container's network ready at C speed, then
 * hand over to usernet's Python stack.
 *
 * Theory of operation
 * ===================
 *
 * Podman (and RootlessKit) start the helper named by network_cmd_path and wait for one byte on
 * the ready fd (-r) before they start the container; slirp4netns writes it 2-7 ms after exec.
 * A Python process needs ~100 ms just to import the stack, so the container would wait that long
 * for its network. This front does, in C, everything the ready byte promises and nothing more:
 *
 *   1. parse the command line (the common subset Podman and RootlessKit use, below);
 *   2. bind and listen on the --api-socket (so a client may connect at once; the kernel queues
 *      its connection until the stack accepts it);
 *   3. fork a child that joins the target's user and network namespaces, creates the TAP
 *      (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a 10-byte virtio-net header) and, with -c, configures
 *      it over rtnetlink exactly as usernet/netns.py:configure_interface does (lo up, MTU, MAC,
 *      IPv6 sysctls, up, IPv4 address, default route; with -6 the SLAAC address and a default
 *      route via fe80::2), then passes the TAP fd back with SCM_RIGHTS;
 *   4. write "1" to the ready fd and close it;
 *   5. block the stop signals (they wait, pending, for the stack's handlers) and
 *      exec `PYTHON -m usernet.slirp4netns ARGS...` with the same arguments and, in the
 *      environment, _USERNET_FRONT=tap=N,ifname=NAME,api=N,pidfd=N: the fds it inherits.
 *      Python re-parses the arguments (the same checks), takes the fds instead of attaching,
 *      and serves.
 *
 * Between 4 and 5 nothing the container sends is lost: the TAP fd stays open across exec, so
 * the kernel queues its frames (txqueuelen 1000) until the stack reads them, ~0.1 s later; a
 * first ARP request or SYN is answered then, not retransmitted.
 *
 * The slow path. Anything this front does not handle -- an option outside the subset (--help,
 * --version, --outbound-addr, --pcap, --daemon-socket, abbreviated or clustered options), a value
 * it cannot check as Python would, USERNET_DAEMON set, USERNET_FRONT=0 (for whoever suspects
 * the front), no -r, or any failure on the way (no
 * /dev/net/tun, a namespace that cannot be joined, a socket path that cannot be bound) -- undoes
 * what it did and execs the Python entry point with the untouched arguments, which does the
 * whole start itself and prints the proper error. So the front can only make a start faster,
 * never change what it does or says.
 *
 * The interpreter: USERNET_PYTHON if set, else the path compiled in (tools/setup.sh builds this
 * file with the checkout's .venv/bin/python). USERNET_FRONT_ARGV0 carries argv[0], so messages
 * name the program as the user called it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef USERNET_PYTHON
#define USERNET_PYTHON "python3"
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#define NS_GET_USERNS 0xb701       /* linux/nsfs.h: _IO(0xb7, 0x1) */
#define VNET_HDR_LEN 10            /* usernet/wire/vnet.py VNET_HDR_LEN: virtio_net_hdr */
#define MIN_MTU 68                 /* usernet/stack/config.py MIN_MTU */
#define MAX_MTU 65520              /* usernet/stack/config.py MAX_MTU */
#define IPV6_MIN_MTU 1280          /* usernet/stack/config.py IPV6_MIN_MTU */
#define API_LISTEN_BACKLOG 1024    /* usernet/api.py API_LISTEN_BACKLOG */
#define CHILD_TIMEOUT_MS 30000     /* usernet/netns.py _CHILD_TIMEOUT */
#define DAEMON_PROTOCOL 1          /* usernet/daemon.py PROTOCOL */
#define DAEMON_TIMEOUT_MS 30000    /* usernet/daemon.py CLIENT_TIMEOUT */
#define API_HANDOVER_LINGER_US 1000000  /* usernet/slirp4netns.py API_HANDOVER_LINGER */

static int g_argc;
static char **g_argv;

/* ------------------------------------------------------------------ exec Python */

/* Exec the Python entry point with our arguments; `front` is the _USERNET_FRONT value or NULL
 * (the slow path: Python does the whole start). Returns only on failure. */
static const char *python(void)
{
    const char *py = getenv("USERNET_PYTHON");
    return py != NULL && *py != '\0' ? py : USERNET_PYTHON;
}

static void exec_python(const char *front)
{
    const char *py = python();
    char **argv = calloc((size_t)g_argc + 4, sizeof(char *));
    if (argv == NULL)
        return;
    argv[0] = (char *)py;
    argv[1] = "-m";
    argv[2] = "usernet.slirp4netns";
    for (int i = 1; i < g_argc; i++)
        argv[i + 2] = g_argv[i];
    setenv("USERNET_FRONT_ARGV0", g_argv[0], 1);
    if (front != NULL)
        setenv("_USERNET_FRONT", front, 1);
    else
        unsetenv("_USERNET_FRONT");
    execvp(py, argv);
    fprintf(stderr, "%s: cannot run %s: %s (set USERNET_PYTHON to usernet's Python, or run "
            "tools/setup.sh again)\n", g_argv[0], py, strerror(errno));
    free(argv);
}

static void slow_path(void)
{
    exec_python(NULL);
    _exit(1);
}

/* ------------------------------------------------------------------ the options */

struct options {
    int configure, ipv6, disable_host_loopback, disable_dns, sandbox;
    int exit_fd, ready_fd, mtu;
    const char *api_socket, *cidr, *netns_type, *userns_path, *macaddress, *daemon_socket;
    const char *pos[2];
    int npos;
};

/* Options whose handling is left to Python untouched (flags it reads after the exec). */
static const char *const passed_flags[] = {
    "disable-host-loopback", "enable-sandbox", "create-sandbox", "enable-seccomp",
    "disable-dns", NULL,
};

/* A strict decimal in [lo, hi] (no sign, no spaces: anything else goes to the slow path). */
static int decimal(const char *s, long lo, long hi, long *out)
{
    if (s == NULL || *s == '\0' || strlen(s) > 9)
        return 0;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        v = v * 10 + (*p - '0');
    }
    if (v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

/* Store one option's value; 0: not one this front handles. */
static int take(struct options *o, const char *name, const char *val)
{
    long v;
    if (strcmp(name, "exit-fd") == 0 || strcmp(name, "ready-fd") == 0) {
        if (!decimal(val, 0, INT_MAX, &v) || fcntl((int)v, F_GETFD) < 0)
            return 0;
        *(name[0] == 'e' ? &o->exit_fd : &o->ready_fd) = (int)v;
    } else if (strcmp(name, "mtu") == 0) {
        if (!decimal(val, MIN_MTU, MAX_MTU, &v))
            return 0;
        o->mtu = (int)v;
    } else if (strcmp(name, "api-socket") == 0) {
        o->api_socket = val;
    } else if (strcmp(name, "cidr") == 0) {
        o->cidr = val;
    } else if (strcmp(name, "netns-type") == 0) {
        o->netns_type = val;
    } else if (strcmp(name, "userns-path") == 0) {
        o->userns_path = val;
    } else if (strcmp(name, "macaddress") == 0) {
        o->macaddress = val;
    } else if (strcmp(name, "daemon-socket") == 0) {
        if (*val == '\0')
            return 0;
        o->daemon_socket = val;
    } else if (strcmp(name, "target-type") == 0) {
        if (strcmp(val, "netns") != 0)
            return 0;
    } else {
        return 0;
    }
    return 1;
}

static int takes_value(const char *name)
{
    static const char *const valued[] = {"exit-fd", "ready-fd", "mtu", "api-socket", "cidr",
                                         "netns-type", "userns-path", "macaddress",
                                         "target-type", "daemon-socket", NULL};
    for (int i = 0; valued[i]; i++)
        if (strcmp(name, valued[i]) == 0)
            return 1;
    return 0;
}

/* getopt_long's common ground: --name, --name=value, --name value, -x, -xVALUE, -x VALUE.
 * 0 for anything else (abbreviations, clusters, "--", unknown options). */
static int parse(int argc, char **argv, struct options *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] == '-' && a[1] == '-') {
            if (a[2] == '\0')
                return 0;
            char name[32];
            const char *eq = strchr(a + 2, '=');
            size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            if (n >= sizeof(name))
                return 0;
            memcpy(name, a + 2, n);
            name[n] = '\0';
            if (strcmp(name, "configure") == 0 || strcmp(name, "enable-ipv6") == 0) {
                if (eq)
                    return 0;
                *(name[0] == 'c' ? &o->configure : &o->ipv6) = 1;
                continue;
            }
            int passed = 0;
            for (int k = 0; passed_flags[k]; k++)
                passed |= strcmp(name, passed_flags[k]) == 0;
            if (passed) {
                if (eq)
                    return 0;
                o->disable_host_loopback |= strcmp(name, "disable-host-loopback") == 0;
                o->disable_dns |= strcmp(name, "disable-dns") == 0;
                o->sandbox |= strcmp(name, "enable-sandbox") == 0
                              || strcmp(name, "create-sandbox") == 0
                              || strcmp(name, "enable-seccomp") == 0;
                continue;
            }
            if (!takes_value(name))
                return 0;
            const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (val == NULL || !take(o, name, val))
                return 0;
        } else if (a[0] == '-' && a[1] != '\0') {
            const char *name;
            switch (a[1]) {
            case 'c': case '6':
                if (a[2] != '\0')
                    return 0;
                *(a[1] == 'c' ? &o->configure : &o->ipv6) = 1;
                continue;
            case 'e': name = "exit-fd"; break;
            case 'r': name = "ready-fd"; break;
            case 'm': name = "mtu"; break;
            case 'a': name = "api-socket"; break;
            default: return 0;
            }
            const char *val = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
            if (val == NULL || !take(o, name, val))
                return 0;
        } else {
            if (o->npos == 2)
                return 0;       /* Python prints "WARNING: too many arguments" */
            o->pos[o->npos++] = a;
        }
    }
    return o->npos == 2;
}

/* ------------------------------------------------------------------ addresses */

struct netconf {
    uint32_t guest, gateway;        /* network byte order */
    int prefixlen;
    unsigned char mac[6];
    int has_mac;
    unsigned char prefix6[16];      /* fd00::, as usernet/stack/config.py DEFAULT_IPV6_PREFIX */
};

/* "a.b.c.d/n" with 1 <= n <= 25 and no host bits, as slirp4netns and usernet require. */
static int parse_cidr(const char *s, struct netconf *c)
{
    char addr[INET_ADDRSTRLEN];
    const char *slash = strchr(s, '/');
    long n;
    if (slash == NULL || (size_t)(slash - s) >= sizeof(addr) || !decimal(slash + 1, 1, 25, &n)
        || slash[1] == '0')
        return 0;
    memcpy(addr, s, (size_t)(slash - s));
    addr[slash - s] = '\0';
    struct in_addr in;
    if (inet_pton(AF_INET, addr, &in) != 1)
        return 0;
    uint32_t net = ntohl(in.s_addr), mask = n ? ~0u << (32 - n) : 0;
    if (net & ~mask)
        return 0;
    c->prefixlen = (int)n;
    c->gateway = htonl(net + 2);
    c->guest = htonl(net + 100);
    return 1;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* aa:bb:cc:dd:ee:ff, unicast. */
static int parse_mac(const char *s, unsigned char mac[6])
{
    if (strlen(s) != 17)
        return 0;
    for (int i = 0; i < 6; i++) {
        int hi = hexval(s[3 * i]), lo = hexval(s[3 * i + 1]);
        if (hi < 0 || lo < 0 || (i < 5 && s[3 * i + 2] != ':'))
            return 0;
        mac[i] = (unsigned char)(hi << 4 | lo);
    }
    return (mac[0] & 1) == 0;
}

/* ------------------------------------------------------------------ rtnetlink (in the child) */

struct nlreq {
    struct nlmsghdr h;
    char body[256];
};

/* A zeroed request of `type` whose fixed part (ifinfomsg, ifaddrmsg, rtmsg) is `body` bytes;
 * returns that part. */
static void *nl_init(struct nlreq *r, unsigned short type, unsigned short flags, size_t body)
{
    memset(r, 0, sizeof(*r));
    r->h.nlmsg_len = NLMSG_LENGTH(body);
    r->h.nlmsg_type = type;
    r->h.nlmsg_flags = flags;
    return NLMSG_DATA(&r->h);
}

static void nl_attr(struct nlreq *r, unsigned short type, const void *data, size_t len)
{
    struct rtattr *rta = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->h.nlmsg_len));
    rta->rta_type = type;
    rta->rta_len = (unsigned short)RTA_LENGTH(len);
    memcpy(RTA_DATA(rta), data, len);
    r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(rta->rta_len);
}

/* Send one request with NLM_F_ACK and wait for its answer: 0, or -1 with errno set. */
static int nl_talk(int nl, struct nlreq *r)
{
    static unsigned seq;
    r->h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    r->h.nlmsg_seq = ++seq;
    if (send(nl, r, r->h.nlmsg_len, 0) < 0)
        return -1;
    char buf[4096];
    for (;;) {
        ssize_t n = recv(nl, buf, sizeof(buf), 0);
        if (n < 0)
            return -1;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != seq || h->nlmsg_type != NLMSG_ERROR)
                continue;
            int err = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
            if (err == 0)
                return 0;
            errno = -err;
            return -1;
        }
    }
}

static int link_set(int nl, int index, int up, int mtu, const unsigned char *mac)
{
    struct nlreq r;
    struct ifinfomsg *ifi = nl_init(&r, RTM_NEWLINK, 0, sizeof(*ifi));
    ifi->ifi_family = AF_UNSPEC;
    ifi->ifi_index = index;
    if (up) {
        ifi->ifi_flags = IFF_UP;
        ifi->ifi_change = IFF_UP;
    }
    if (mtu) {
        uint32_t m = (uint32_t)mtu;
        nl_attr(&r, IFLA_MTU, &m, sizeof(m));
    }
    if (mac)
        nl_attr(&r, IFLA_ADDRESS, mac, 6);
    return nl_talk(nl, &r);
}

static int addr_add(int nl, int index, int family, const void *addr, int prefixlen)
{
    struct nlreq r;
    struct ifaddrmsg *ifa = nl_init(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, sizeof(*ifa));
    ifa->ifa_family = (unsigned char)family;
    ifa->ifa_prefixlen = (unsigned char)prefixlen;
    ifa->ifa_scope = RT_SCOPE_UNIVERSE;
    ifa->ifa_index = (unsigned)index;
    size_t len = family == AF_INET ? 4 : 16;
    if (family == AF_INET)
        nl_attr(&r, IFA_LOCAL, addr, len);
    nl_attr(&r, IFA_ADDRESS, addr, len);
    return nl_talk(nl, &r);
}

static int route_add_default(int nl, int index, int family, const void *gw, int proto)
{
    struct nlreq r;
    struct rtmsg *rt = nl_init(&r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, sizeof(*rt));
    rt->rtm_family = (unsigned char)family;
    rt->rtm_table = RT_TABLE_MAIN;
    rt->rtm_protocol = (unsigned char)proto;
    rt->rtm_scope = RT_SCOPE_UNIVERSE;
    rt->rtm_type = RTN_UNICAST;
    uint32_t oif = (uint32_t)index;
    nl_attr(&r, RTA_GATEWAY, gw, family == AF_INET ? 4 : 16);
    nl_attr(&r, RTA_OIF, &oif, sizeof(oif));
    return nl_talk(nl, &r);
}

static int write_sysctl(const char *ifname, const char *key, const char *value)
{
    char path[128];
    snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/%s", ifname, key);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, value, strlen(value));
    close(fd);
    return n < 0 ? -1 : 0;
}

/* usernet/netns.py configure_interface, step for step. */
static int configure(const char *ifname, int mtu, const struct netconf *c, int ipv6)
{
    int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (nl < 0)
        return -1;
    int rc = -1, idx;
    if (link_set(nl, (int)if_nametoindex("lo"), 1, 0, NULL) < 0)
        goto out;
    if ((idx = (int)if_nametoindex(ifname)) == 0)
        goto out;
    if (link_set(nl, idx, 0, mtu, NULL) < 0)
        goto out;
    if (c->has_mac && link_set(nl, idx, 0, 0, c->mac) < 0)
        goto out;
    /* Before the link is up, or the kernel starts DAD on the link-local address it forms. */
    if (ipv6 && (write_sysctl(ifname, "disable_ipv6", "0") < 0
                 || write_sysctl(ifname, "accept_dad", "0") < 0))
        goto out;
    if (link_set(nl, idx, 1, 0, NULL) < 0)
        goto out;
    if (addr_add(nl, idx, AF_INET, &c->guest, c->prefixlen) < 0)
        goto out;
    if (route_add_default(nl, idx, AF_INET, &c->gateway, RTPROT_BOOT) < 0)
        goto out;
    if (ipv6) {
        unsigned char mac[6], a6[16], gw6[16];
        if (c->has_mac) {
            memcpy(mac, c->mac, 6);
        } else {
            struct ifreq ifr;
            memset(&ifr, 0, sizeof(ifr));
            snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
            int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            int got = s >= 0 && ioctl(s, SIOCGIFHWADDR, &ifr) == 0;
            if (s >= 0)
                close(s);
            if (!got)
                goto out;
            memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
        }
        /* The modified EUI-64 interface identifier (RFC 4291 appendix A). */
        memcpy(a6, c->prefix6, 8);
        a6[8] = mac[0] ^ 0x02; a6[9] = mac[1]; a6[10] = mac[2];
        a6[11] = 0xff; a6[12] = 0xfe;
        a6[13] = mac[3]; a6[14] = mac[4]; a6[15] = mac[5];
        inet_pton(AF_INET6, "fe80::2", gw6);
        if (addr_add(nl, idx, AF_INET6, a6, 64) < 0)
            goto out;
        if (route_add_default(nl, idx, AF_INET6, gw6, RTPROT_STATIC) < 0)
            goto out;
    }
    rc = 0;
out:
    close(nl);
    return rc;
}

/* ------------------------------------------------------------------ the namespace child */

static int same_ns(int fd, const char *path)
{
    struct stat a, b;
    return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino
           && a.st_dev == b.st_dev;
}

/* In the child: join, create, configure, send the fd back. Never returns. */
static void child(int sock, int user_fd, int net_fd, const struct options *o,
                  const struct netconf *c)
{
    /* User namespace first: our rights over the netns come from being in its owner. */
    if ((user_fd >= 0 && setns(user_fd, CLONE_NEWUSER) < 0) || setns(net_fd, CLONE_NEWNET) < 0)
        _exit(1);
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (fd < 0)
        _exit(1);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", o->pos[1]);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    int hdr = VNET_HDR_LEN;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0)
        _exit(1);
    if (o->configure && configure(ifr.ifr_name, o->mtu, c, o->ipv6) < 0)
        _exit(1);
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof(cbuf));
    struct iovec iov = {.iov_base = ifr.ifr_name, .iov_len = strnlen(ifr.ifr_name, IFNAMSIZ)};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                         .msg_controllen = sizeof(cbuf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    _exit(sendmsg(sock, &msg, 0) < 0 ? 1 : 0);
}

/* Fork the child and receive the TAP fd (inheritable: it must survive the exec) and its name;
 * -1 on any failure (the slow path then says what it was). */
static int make_tap(int user_fd, int net_fd, const struct options *o, const struct netconf *c,
                    char ifname[IFNAMSIZ])
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        child(sv[1], user_fd, net_fd, o, c);
    }
    close(sv[1]);
    int fd = -1;
    struct pollfd p = {.fd = sv[0], .events = POLLIN};
    if (poll(&p, 1, CHILD_TIMEOUT_MS) == 1) {
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {.iov_base = ifname, .iov_len = IFNAMSIZ - 1};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                             .msg_controllen = sizeof(cbuf)};
        memset(ifname, 0, IFNAMSIZ);
        ssize_t n = recvmsg(sv[0], &msg, 0);
        struct cmsghdr *cm = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
        if (cm != NULL && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
            memcpy(&fd, CMSG_DATA(cm), sizeof(int));
    } else {
        kill(pid, SIGKILL);
    }
    close(sv[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return fd;
}

/* ------------------------------------------------------------------ the API socket */

/* A listening socket at `path`, 0600 from birth (usernet/api.py _bind_unix); -1 if not. */
static int bind_api(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    if (strlen(path) >= sizeof(sa.sun_path))
        return -1;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return -1;          /* refused, with Python's words, on the slow path */
        unlink(path);           /* a stale socket, as slirp4netns does */
    } else if (errno != ENOENT) {
        return -1;
    }
    strcpy(sa.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0)
        return -1;
    if (fchmod(s, 0600) < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(s);
        return -1;
    }
    if (chmod(path, 0600) < 0 || listen(s, API_LISTEN_BACKLOG) < 0) {
        close(s);
        unlink(path);
        return -1;
    }
    return s;
}

/* ------------------------------------------------------------------ the daemon */

/* usernet/daemon.py default_socket_path: $USERNET_DAEMON_SOCKET; else
 * $XDG_RUNTIME_DIR/usernet/daemon.sock when that directory is ours; else /run/usernet (root)
 * or /tmp/usernet-UID. */
static void default_daemon_socket(char *out, size_t n)
{
    const char *env = getenv("USERNET_DAEMON_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    if (env != NULL && *env != '\0')
        snprintf(out, n, "%s", env);
    else if (xdg != NULL && xdg[0] == '/' && stat(xdg, &st) == 0 && S_ISDIR(st.st_mode)
             && st.st_uid == geteuid())
        snprintf(out, n, "%s/usernet/daemon.sock", xdg);
    else if (geteuid() == 0)
        snprintf(out, n, "/run/usernet/daemon.sock");
    else
        snprintf(out, n, "/tmp/usernet-%u/daemon.sock", (unsigned)geteuid());
}

/* The daemon the options or USERNET_DAEMON ask for, as slirp4netns.daemon_choice reads them:
 * 0 none, 1 asked for (path in `out`; `*required`: its absence is an error), -1 a value this
 * front leaves to Python. */
static int daemon_choice(const struct options *o, char *out, size_t n, int *required)
{
    const char *v = getenv("USERNET_DAEMON");
    *required = 1;
    if (o->daemon_socket != NULL) {
        snprintf(out, n, "%s", o->daemon_socket);
        return 1;
    }
    if (v == NULL || *v == '\0' || strcmp(v, "0") == 0)
        return 0;
    if (strcmp(v, "1") == 0 || strcmp(v, "auto") == 0) {
        *required = v[0] == '1';
        default_daemon_socket(out, n);
        return 1;
    }
    if (v[0] == '/') {
        snprintf(out, n, "%s", v);
        return 1;
    }
    return -1;
}

/* A connection to the daemon at `path`, served by us or root (daemon.py DaemonClient); -1. */
static int daemon_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return -1;
    strcpy(sa.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (s < 0)
        return -1;
    if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0
        || getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0
        || (cred.uid != geteuid() && cred.uid != 0)) {
        close(s);
        return -1;
    }
    return s;
}

/* `s` as a JSON string. */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* A log field's value as usernet/log.py quote() writes it: bare, or JSON when it has a space,
 * '"', '=', '\\' or a control character. */
static void log_value(FILE *f, const char *s)
{
    int bare = *s != '\0';
    for (const char *p = s; *p; p++)
        bare &= !strchr(" \"=\\", *p) && (unsigned char)*p >= 0x20;
    if (bare)
        fputs(s, f);
    else
        json_str(f, s);
}

static void log_line(const char *level, const char *event)
{
    struct timespec ts;
    struct tm tm;
    char when[32];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "ts=%s.%03ldZ level=%s event=%s", when, ts.tv_nsec / 1000000, level, event);
}

/* Hand the TAP (and the pidfd, the exit fd) to the daemon as daemon.py hand_over does, and
 * read its answer: the link's id, or -1 if it refused or did not answer. */
static long daemon_attach(int s, const struct options *o, const char *cidr, const char *where,
                          long pid, int tap, int pidfd)
{
    char *req = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&req, &len);
    if (f == NULL)
        return -1;
    int fds[3], nfds = 0;
    const char *roles[3];
    fds[nfds] = tap, roles[nfds++] = "tap";
    if (pidfd >= 0)
        fds[nfds] = pidfd, roles[nfds++] = "pidfd";
    if (o->exit_fd >= 0)
        fds[nfds] = o->exit_fd, roles[nfds++] = "exit";
    fprintf(f, "{\"op\": \"attach\", \"version\": %d, \"fds\": [", DAEMON_PROTOCOL);
    for (int i = 0; i < nfds; i++)
        fprintf(f, "%s\"%s\"", i ? ", " : "", roles[i]);
    fputs("], \"where\": ", f);
    json_str(f, where);
    if (pid > 0)
        fprintf(f, ", \"pid\": %ld", pid);
    fputs(", \"tap\": ", f);
    json_str(f, o->pos[1]);
    fputs(", \"config\": {\"cidr\": ", f);
    json_str(f, cidr);
    const char *link_local = getenv("USERNET_ALLOW_LINK_LOCAL");
    fprintf(f, ", \"mtu\": %d, \"host_loopback\": %s, \"allow_link_local\": %s, "
            "\"enable_dns\": %s, \"enable_ipv6\": %s", o->mtu,
            o->disable_host_loopback ? "false" : "true",
            link_local != NULL && strcmp(link_local, "1") == 0 ? "true" : "false",
            o->disable_dns ? "false" : "true", o->ipv6 ? "true" : "false");
    if (o->macaddress != NULL) {
        fputs(", \"guest_mac\": \"", f);
        for (const char *p = o->macaddress; *p; p++)
            if (*p != ':')
                fputc(*p >= 'A' && *p <= 'F' ? *p - 'A' + 'a' : *p, f);
        fputc('"', f);
    }
    fputs("}, \"options\": {\"offload\": true", f);
    if (o->api_socket != NULL) {
        char abs[PATH_MAX + 1], cwd[PATH_MAX];
        if (o->api_socket[0] == '/' || getcwd(cwd, sizeof(cwd)) == NULL)
            snprintf(abs, sizeof(abs), "%s", o->api_socket);
        else
            snprintf(abs, sizeof(abs), "%s/%s", cwd, o->api_socket);
        fputs(", \"api_socket\": ", f);
        json_str(f, abs);
    }
    fputs("}}\n", f);
    fclose(f);

    char cbuf[CMSG_SPACE(sizeof(fds))];
    memset(cbuf, 0, sizeof(cbuf));
    struct iovec iov = {.iov_base = req, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * nfds)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    ssize_t sent = sendmsg(s, &msg, MSG_NOSIGNAL);
    /* The rest of a long request without fds (the daemon reads a line). */
    while (sent > 0 && (size_t)sent < len) {
        ssize_t more = send(s, req + sent, len - (size_t)sent, MSG_NOSIGNAL);
        sent = more > 0 ? sent + more : -1;
    }
    free(req);
    if (sent < 0)
        return -1;

    char reply[4096];
    size_t got = 0;
    while (got < sizeof(reply) - 1 && memchr(reply, '\n', got) == NULL) {
        struct pollfd p = {.fd = s, .events = POLLIN};
        ssize_t n;
        if (poll(&p, 1, DAEMON_TIMEOUT_MS) != 1 || (n = recv(s, reply + got, sizeof(reply) - 1 - got, 0)) <= 0)
            return -1;
        got += (size_t)n;
    }
    reply[got] = '\0';
    /* json.dumps's own spacing: {"ok": true, "link": 3, ...}. Anything else is a refusal,
     * which the slow path asks again and reports in Python's words. */
    const char *id = strstr(reply, "\"link\": ");
    if (strncmp(reply, "{\"ok\": true", 11) != 0 || id == NULL)
        return -1;
    return strtol(id + 8, NULL, 10);
}

/* The link is the daemon's (slirp4netns.py _handover): hand it the TAP and the watches, write
 * the ready byte, log the start line, and exit without a Python process. A refusal undoes and
 * takes the slow path, which asks again and reports it. */
static int handed_over(int dsock, const struct options *o, const struct netconf *c, long pid,
                       int tap, int pidfd, const char *dpath)
{
    char where[PATH_MAX + 16];
    if (pid > 0)
        snprintf(where, sizeof(where), "pid %ld", pid);
    else
        snprintf(where, sizeof(where), "%s", o->pos[0]);
    const char *cidr = o->cidr != NULL ? o->cidr : "10.0.2.0/24";
    long link = daemon_attach(dsock, o, cidr, where, pid, tap, pidfd);
    close(dsock);
    close(tap);
    if (pidfd >= 0)
        close(pidfd);
    if (link < 0)
        slow_path();
    if (o->exit_fd >= 0)
        close(o->exit_fd);
    /* The link exists now: a failure here is reported, not retried (Python does the same). */
    if (write(o->ready_fd, "1", 1) != 1) {
        log_line("error", "log");
        fprintf(stderr, " msg=\"cannot write to the ready fd %d: %s\"\n", o->ready_fd,
                strerror(errno));
        return 1;
    }
    close(o->ready_fd);
    if (o->sandbox) {
        /* They act per process, and the daemon is one process for every container. */
        log_line("info", "log");
        fputs(" msg=\"--enable-sandbox/--enable-seccomp not applied: the daemon serves this "
              "container\"\n", stderr);
    }
    char guest[INET_ADDRSTRLEN], gw[INET_ADDRSTRLEN], dns[INET_ADDRSTRLEN], addr[40];
    uint32_t dns_ip = htonl(ntohl(c->gateway) + 1);
    inet_ntop(AF_INET, &c->guest, guest, sizeof(guest));
    inet_ntop(AF_INET, &c->gateway, gw, sizeof(gw));
    inet_ntop(AF_INET, &dns_ip, dns, sizeof(dns));
    snprintf(addr, sizeof(addr), "%s/%d", guest, c->prefixlen);
    log_line("info", "attached");
    fputs(" where=", stderr);
    log_value(stderr, where);
    fputs(" tap=", stderr);
    log_value(stderr, o->pos[1]);
    fprintf(stderr, " addr=%s gateway=%s dns=%s mtu=%d", addr, gw, o->disable_dns ? "off" : dns,
            o->mtu);
    if (o->ipv6)
        fputs(" ipv6=fd00::/64 gateway6=fd00::2", stderr);
    fputs(" daemon=", stderr);
    log_value(stderr, dpath);
    fprintf(stderr, " link=%ld\n", link);
    if (o->api_socket != NULL)
        usleep(API_HANDOVER_LINGER_US);     /* Podman watches our pid a moment after the byte */
    return 0;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    g_argc = argc;
    g_argv = argv;
    struct options o = {.exit_fd = -1, .ready_fd = -1, .mtu = 1500, .netns_type = "pid"};
    struct netconf c;
    memset(&c, 0, sizeof(c));
    const char *wanted = getenv("USERNET_FRONT"), *dns_env = getenv("USERNET_DNS_UPSTREAM");
    long pid = 0;
    char dpath[PATH_MAX];
    int required = 1, want_daemon = 0;
    /* An interpreter we could not exec after the ready byte would leave Podman with a network
     * nobody serves: find out first (the slow path then prints why, before any ready byte). */
    if ((wanted != NULL && strcmp(wanted, "0") == 0)
        || !parse(argc, argv, &o) || o.ready_fd < 0 || o.ready_fd == o.exit_fd
        || (strchr(python(), '/') != NULL && access(python(), X_OK) < 0)
        || (want_daemon = daemon_choice(&o, dpath, sizeof(dpath), &required)) < 0
        /* The daemon with an upstream to parse, or with nothing but SIGTERM to end the link
         * (Python then serves here and says why): Python's to do. */
        || (want_daemon && ((dns_env != NULL && *dns_env != '\0')
                            || (o.exit_fd < 0 && strcmp(o.netns_type, "pid") != 0)))
        || strlen(o.pos[1]) >= IFNAMSIZ || (o.ipv6 && o.mtu < IPV6_MIN_MTU)
        || (o.macaddress != NULL && (!o.configure || !parse_mac(o.macaddress, c.mac)))
        || !parse_cidr(o.cidr != NULL ? o.cidr : "10.0.2.0/24", &c)
        || (o.userns_path != NULL && access(o.userns_path, F_OK) < 0)
        || access("/dev/net/tun", R_OK | W_OK) < 0)
        slow_path();
    c.has_mac = o.macaddress != NULL;
    inet_pton(AF_INET6, "fd00::", c.prefix6);

    char net_path[PATH_MAX];
    const char *user_path = o.userns_path;
    if (strcmp(o.netns_type, "pid") == 0) {
        if (!decimal(o.pos[0], 1, INT_MAX, &pid))
            slow_path();
        snprintf(net_path, sizeof(net_path), "/proc/%ld/ns/net", pid);
        if (user_path == NULL) {
            static char up[64];
            snprintf(up, sizeof(up), "/proc/%ld/ns/user", pid);
            user_path = up;
        }
    } else if (access(o.pos[0], F_OK) < 0 || strlen(o.pos[0]) >= sizeof(net_path)) {
        slow_path();
    } else {
        strcpy(net_path, o.pos[0]);
    }

    int api = -1, pidfd = -1, net_fd = -1, user_fd = -1, tap = -1, dsock = -1;
    if (want_daemon && (dsock = daemon_connect(dpath)) < 0 && required)
        slow_path();            /* Python says the daemon is not there, and how to fix it */
    /* With the daemon the API socket is the daemon's to bind (its link serves it). */
    if (dsock < 0 && o.api_socket != NULL && (api = bind_api(o.api_socket)) < 0)
        goto undo;
    if (pid > 0 && (pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0)) < 0 && errno == ESRCH)
        goto undo;
    if (pidfd >= 0)
        fcntl(pidfd, F_SETFD, 0);   /* pidfds are born close-on-exec; Python needs this one */
    if ((net_fd = open(net_path, O_RDONLY | O_CLOEXEC)) < 0)
        goto undo;
    if (user_path != NULL) {
        if ((user_fd = open(user_path, O_RDONLY | O_CLOEXEC)) < 0)
            goto undo;
    } else {
        user_fd = ioctl(net_fd, NS_GET_USERNS);     /* EPERM: an ancestor's; nothing to join */
    }
    if (user_fd >= 0 && same_ns(user_fd, "/proc/self/ns/user")) {
        close(user_fd);
        user_fd = -1;
    }
    char ifname[IFNAMSIZ];
    if ((tap = make_tap(user_fd, net_fd, &o, &c, ifname)) < 0)
        goto undo;
    if (dsock >= 0)
        return handed_over(dsock, &o, &c, pid, tap, pidfd, dpath);
    /* The stop signals (and SIGUSR1/2) stay pending until the stack has its handlers: Podman
     * may SIGTERM us the moment it reads the byte, and that must still be a clean exit 0 that
     * removes the API socket, not death halfway through Python's start. The mask survives
     * exec; usernet/slirp4netns.py unblocks them once serving (FRONT_BLOCKED_SIGNALS). */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGHUP);
    sigaddset(&stop, SIGUSR1);
    sigaddset(&stop, SIGUSR2);
    sigprocmask(SIG_BLOCK, &stop, NULL);
    if (write(o.ready_fd, "1", 1) != 1) {
        sigprocmask(SIG_UNBLOCK, &stop, NULL);
        goto undo;
    }
    close(o.ready_fd);
    close(net_fd);
    if (user_fd >= 0)
        close(user_fd);

    char front[128];
    snprintf(front, sizeof(front), "tap=%d,ifname=%s,api=%d,pidfd=%d", tap, ifname, api, pidfd);
    exec_python(front);
    return 1;                   /* the network is ready but nobody will serve it: say so, fail */

undo:
    if (dsock >= 0)
        close(dsock);
    if (tap >= 0)
        close(tap);
    if (api >= 0) {
        close(api);
        unlink(o.api_socket);
    }
    if (pidfd >= 0)
        close(pidfd);
    if (net_fd >= 0)
        close(net_fd);
    if (user_fd >= 0)
        close(user_fd);
    slow_path();
    return 1;
}

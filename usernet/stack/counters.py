"""Every counter usernet increments, declared once.

A counter is a named decision or drop (DESIGN.md: "every drop and decision
has a named counter that tests assert"). Names are declared here, grouped by
the module that increments them; :class:`Counters` (a ``collections.Counter``)
raises :class:`UnknownCounter` the first time an undeclared name is touched,
so a misspelled counter fails the test that reaches it instead of silently
starting a new one, and ``tests/unit/test_counters.py`` checks every name
spelled in the source against this list. The check costs nothing per frame:
``__missing__`` runs only on a name's first use.

The API's ``stats`` reports every declared counter, zero or not
(:func:`snapshot`).

Families built at run time are declared from their parts: a wire parse error
becomes ``drop_<reason>`` (:data:`PARSE_REASONS`), a failed host connect
``tcp_host_connect_failed_<reason>``, and so on.
"""

from collections import Counter

from .events import ALL_EVENTS
from .nat import REFUSAL_REASONS

#: ``usernet.wire.ParseError`` reasons; each is counted as ``drop_<reason>``.
PARSE_REASONS = (
    "arp_truncated", "arp_unsupported",
    "dhcp_bad_op", "dhcp_bad_option", "dhcp_no_cookie", "dhcp_truncated",
    "dhcp_unsupported_htype",
    "dns_name_bad_label", "dns_name_bad_pointer", "dns_name_too_long", "dns_name_truncated",
    "dns_bad_qdcount", "dns_no_question", "dns_not_query", "dns_tcp_empty", "dns_trailing_bytes",
    "dns_truncated",
    "eth_not_ethernet_ii", "eth_truncated", "eth_vlan_stacked",
    "icmp_truncated",
    "ipv4_bad_ihl", "ipv4_bad_length", "ipv4_bad_version", "ipv4_truncated",
    "dhcp6_bad_option", "dhcp6_truncated",
    "ipv6_bad_length", "ipv6_bad_version", "ipv6_ext_chain_too_long", "ipv6_ext_truncated",
    "ipv6_truncated",
    "nd_bad_code", "nd_bad_option", "nd_not_nd", "nd_truncated",
    "tcp_bad_offset", "tcp_opt_bad_length", "tcp_opt_truncated", "tcp_truncated",
    "udp_bad_length", "udp_truncated",
)
#: Why a host connect failed (``host/tcp.py`` maps errnos to these).
CONNECT_FAILURES = ("refused", "unreachable", "timeout", "denied", "fd_limit", "error")
#: Why no upstream resolver answered.
DNS_FAILURES = ("timeout", "no_upstream", "unreachable", "error", "evicted")
#: TCP states in which a segment can only be dropped (``tcp_drop_<state>``).
TCP_DEAD_STATES = ("listen", "closed")

_GATEWAY = (
    "rx_frames",
    "drop_eth_not_for_us", "drop_eth_unknown_ethertype", "drop_ipv6_disabled",
    "drop_ipv4_bad_checksum", "drop_ipv4_bad_source", "drop_ipv4_ttl_zero", "drop_l4_bad_checksum",
    "ipv4_protocol_unreachable_tx", "icmp_frag_needed_tx", "icmp_dest_unreachable_local",
    "icmp_error_suppressed_broadcast",
    "icmp_echo_local_reply", "icmp_echo_forward", "icmp_echo_refused_policy",
    "icmp_echo_reply_rx", "icmp_echo_admin_prohibited_tx", "drop_icmp_unhandled_type",
    "udp_tx_datagrams", "udp_rx_datagrams", "udp_tx_fragments", "icmp_tx_fragments", "udp_refused_policy",
    "udp_port_unreachable_local", "udp_port_unreachable_tx", "udp_inbound_flow_open",
    "udp_inbound_source_port_picked", "udp_inbound_no_source_port",
    "drop_udp_broadcast", "drop_udp_too_big_for_ipv4",
    "tcp_syn_connect", "tcp_syn_refused_policy", "tcp_syn_flow_limit_rst",
    "tcp_syn_connect_limit_drop", "tcp_syn_reopened_time_wait", "tcp_rst_no_flow",
    "tcp_drop_rst_no_flow", "tcp_rst_tx", "tcp_flow_closed", "tcp_tx_gso_segments",
    "tcp_host_connected", "tcp_host_reset", "tcp_inbound_open", "tcp_inbound_flow_limit",
    "tcp_inbound_connect_timeout", "tcp_inbound_source_port_picked",
    "tcp_inbound_no_source_port", "fwd_client_addr_as_gateway",
    "dns_local_answer", "dns_query_forwarded", "dns_servfail_too_many_pending",
    "dns_servfail_tx", "dns_answer_rx", "dns_late_answer", "drop_dns_unparsable_query",
    # limits and the memory budget (stack/budget.py, stack/tcpnat.py, stack/flows.py)
    "dns_servfail_budget", "dns_pending_evicted", "tcp_syn_budget_rst",
    "tcp_inbound_budget_refused", "tcp_budget_window_squeezed", "tcp_budget_send_capped",
    "tcp_flow_evicted", "tcp_keepalive_probe_tx", "tcp_keepalive_timeout",
)
_ARP = ("arp_change_ignored", "arp_relearned_ip", "drop_arp_hold_budget",
        "arp_learned", "arp_table_full", "arp_gratuitous", "arp_reply_tx", "arp_reply_rx",
        "arp_ignored_not_ours", "arp_request_tx", "drop_arp_bad_oper", "drop_arp_hold_full",
        "drop_arp_unresolved")
_NDP = ("ndp_change_ignored", "ndp_relearned_ip", "drop_ndp_hold_budget",
        "ndp_learned", "ndp_table_full", "ndp_ns_tx", "drop_ndp_hold_full",
        "drop_ndp_unresolved",
        # the router's link services (usernet/stack/ndp.py)
        "ndp_ra_unsolicited", "ndp_ra_solicited", "ndp_na_sent", "ndp_na_received",
        "ndp_ns_not_ours", "ndp_ra_from_container", "drop_nd_hop_limit",
        "dhcp6_information_request", "dhcp6_other_server", "dhcp6_ignored")
# The IPv6 input path (usernet/stack/gateway.py), ICMPv6 (RFC 4443).
_IPV6 = ("drop_ipv6_bad_source", "drop_ipv6_bad_destination",
         "drop_ipv6_no_next_header", "drop_ipv6_ext_header", "drop_icmp6_unhandled_type", "drop_icmp6_error_rx",
         "icmp6_echo_local_reply", "icmp6_time_exceeded_tx", "icmp6_packet_too_big_tx",
         "icmp6_param_problem_tx", "icmp6_error_suppressed", "udp6_port_unreachable_local",
         "drop_udp_too_big_for_ipv6", "frag6_received")
_FLOWS = ("udp_flow_open", "udp_flow_expired", "drop_udp_flow_limit",
          "icmp_flow_open", "icmp_flow_expired", "drop_icmp_flow_limit",
          "udp_flow_evicted", "icmp_flow_evicted", "drop_udp_budget", "drop_icmp_budget")
_FRAG = ("frag_received", "frag_reassembled", "frag_duplicate", "frag_drop_bad_fragment",
         "frag_drop_inconsistent", "frag_drop_memory_limit", "frag_drop_overlap",
         "frag_drop_timeout", "drop_frag_too_big",
         "frag_evicted_oldest", "frag_drop_budget")
_DHCP = ("dhcp_discover", "dhcp_offer", "dhcp_request", "dhcp_ack", "dhcp_nak", "dhcp_decline",
         "dhcp_release", "dhcp_inform", "dhcp_pool_exhausted", "dhcp_request_other_server",
         "dhcp_drop_bad", "dhcp_drop_bad_chaddr", "dhcp_drop_bad_request", "dhcp_drop_bad_type",
         "dhcp_drop_no_type", "dhcp_drop_not_request", "dhcp_drop_relayed")
_TCP = (
    "tcp_syn_rx", "tcp_dup_syn_rx", "tcp_dup_syn_absorbed", "tcp_active_open",
    "tcp_simultaneous_open", "tcp_established", "tcp_syn_host_refused_rst", "tcp_syn_timeout",
    "tcp_host_connected_ignored", "tcp_host_refused_ignored", "tcp_host_eof",
    "tcp_send_refused_state", "tcp_send_queue_copied", "tcp_tx_tail_deferred",
    "tcp_tx_window_deferred", "tcp_abort", "tcp_give_up", "tcp_closed_last_ack",
    "tcp_time_wait_done", "tcp_time_wait_syn_reuse", "tcp_fin_rx", "tcp_rst_rx",
    "tcp_rst_rx_time_wait_ignored", "tcp_rst_tx_bad_ack", "tcp_challenge_ack",
    "tcp_oow_ack_ratelimited", "tcp_delayed_ack_tx", "tcp_window_update_tx", "tcp_window_update_deferred",
    "tcp_zero_window_tx", "tcp_zero_window_probe", "tcp_sws_override",
    "tcp_pause_reading", "tcp_resume_reading",
    "tcp_retransmit", "tcp_retransmit_timeout", "tcp_fast_retransmit", "tcp_limited_transmit",
    "tcp_recovery_probe",
    # header prediction (stack/tcp.py): segments that took the short paths
    "tcp_fast_path_rx", "tcp_fast_path_tx",
    # SACK-based recovery (RFC 6675) and RACK-TLP (RFC 8985)
    "tcp_fast_recoveries", "tcp_rack_retransmits", "tcp_rack_lost_marked", "tcp_rack_timer",
    "tcp_tlp_probes", "tcp_tlp_new_data", "tcp_tlp_spurious", "tcp_tlp_loss_repaired",
    "tcp_dsack_rx", "tcp_reordering_seen", "tcp_sack_scoreboard_full",
    "tcp_dup_ack_rx", "tcp_dup_data_rx", "tcp_ooo_queued", "tcp_ooo_duplicate",
    "tcp_rx_trimmed_to_window",
    "tcp_drop_ack_too_old", "tcp_drop_ack_unsent", "tcp_drop_before_answer",
    "tcp_drop_data_after_fin", "tcp_drop_no_ack", "tcp_drop_ooo_full", "tcp_drop_out_of_window",
    "tcp_drop_paws", "tcp_drop_rst_bad_ack", "tcp_drop_rst_no_ack",
    "tcp_drop_rst_out_of_window", "tcp_drop_syn_sent_no_syn", "tcp_drop_synack_data",
    "tcp_drop_zero_window", "tcp_exit_reset", "tcp_peer_mss_clamped",
)
# The host side (usernet/host/): the driver, host sockets, DNS upstream, forwards.
_HOST = (
    "rx_gso_frames", "tx_frames", "drop_vnet_truncated", "drop_stack_error", "drop_tx_error",
    "drop_tx_queue_full", "exit_drain_timeout", "exit_flush_timeout", "host_event_unhandled",
    "host_flush_rounds_exceeded", "tcp_host_data_after_close",
    "udp_host_socket_error", "udp_host_recv_error", "drop_udp_host_send_eagain",
    "drop_udp_host_send_error", "drop_udp_no_host_socket", "udp_gso_sends", "udp_gso_refused",
    "icmp_host_socket_error", "icmp_host_recv_error", "icmp_echo_host_tx",
    "drop_icmp_host_send_error", "drop_icmp_no_host_socket",
    "dns_upstream_refused", "dns_upstream_send_error", "dns_upstream_silent",
    "drop_dns_answer_id_mismatch",
    "fwd_added", "fwd_removed", "fwd_guest6_unknown", "fwd_add_bind_failed", "fwd_bound_poll_error",
    "fwd_closed_guest_unbound", "fwd_opened_guest_bound", "fwd_reopen_failed",
    "fwd_tcp_accepted", "fwd_tcp_guest_connected", "fwd_tcp_guest_refused",
    "fwd_tcp_guest_timeout", "fwd_tcp_listen_error", "fwd_tcp_open_refused_rst",
    "fwd_udp_client_new", "fwd_udp_drop_flow_limit", "fwd_udp_drop_reply_eagain",
    "fwd_udp_drop_reply_error", "fwd_udp_drop_reply_not_listening", "fwd_udp_recv_error",
    "fwd_udp_reply_tx", "fwd_udp_rx_datagrams",
)

# The DNS forwarder's screen (usernet/stack/dns.py screen_query) and its
# TCP sessions (usernet/host/dns.py DnsTcpSession).
_DNS_GUARD = (
    "dns_query_ok", "dns_query_formerr", "dns_query_notimp", "dns_query_too_large_formerr",
    "drop_dns_query_malformed", "drop_dns_query_is_response",
    "dns_tcp_session_open", "dns_tcp_message_rx", "dns_tcp_answer_tx", "dns_tcp_local_answer",
    "dns_tcp_relayed_udp", "dns_tcp_relayed_tcp", "dns_tcp_upstream_truncated",
    "dns_tcp_servfail", "dns_tcp_servfail_too_many_inflight", "dns_tcp_message_limit",
    "dns_tcp_idle_close", "dns_tcp_bad_framing", "dns_tcp_closed_on_garbage",
)

# The virtual switch of a named network (usernet/stack/switch.py), counted
# on the link whose frame it decided about (``switch_delivered``: on the
# link whose TAP got it).
_SWITCH = ("switch_flooded", "switch_unicast", "switch_unknown_unicast_flooded",
           "switch_delivered", "switch_mac_learned", "switch_mac_aged", "switch_ip6_learned",
           "switch_drop_runt", "switch_drop_hairpin", "switch_drop_mac_spoof",
           "switch_drop_ip_spoof", "switch_drop_mac_limit", "switch_drop_ip6_limit",
           "switch_drop_gso_to_plain", "switch_drop_bad_vnet_hdr", "switch_drop_port_gone",
           "switch_drop_flood_limit")

# The API socket (usernet/api.py): requests and its limits.
_API = ("api_request", "api_request_too_large", "api_conn_timeout", "api_conn_evicted",
        "api_conn_busy", "api_fwd_limit", "api_host_addr_not_unicast")

DECLARED = frozenset(
    _API + _SWITCH + _DNS_GUARD + _GATEWAY + _ARP + _NDP + _IPV6 + _FLOWS + _FRAG + _DHCP + _TCP + _HOST
    + tuple("drop_" + r for r in PARSE_REASONS)
    + tuple("policy_refused_" + r for r in REFUSAL_REASONS)
    + tuple("tcp_host_connect_failed_" + r for r in CONNECT_FAILURES)
    + tuple("dns_upstream_failed_" + r for r in DNS_FAILURES)
    + tuple("tcp_drop_" + s for s in TCP_DEAD_STATES)
    + tuple("host_event_error_" + ev.KIND for ev in ALL_EVENTS)
    + tuple(f"impair_{d}_{what}" for d in ("rx", "tx", "check")
            for what in ("dropped", "duplicated", "reordered"))
)


class UnknownCounter(KeyError):
    """A counter name that is not declared in :mod:`usernet.stack.counters`."""


class Counters(Counter):
    """A ``collections.Counter`` that knows only the declared names."""

    __slots__ = ()

    def __missing__(self, key):
        if key not in DECLARED:
            raise UnknownCounter(key)
        return 0


def snapshot(counters) -> dict:
    """Every declared counter, zero or not, plus any other name present."""
    out = dict.fromkeys(sorted(DECLARED), 0)
    out.update(counters)
    return out

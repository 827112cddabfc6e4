//! Filter expressions both filter tests run, in user space and in the
//! kernel.

/// What the issue asks for: host, net, port, portrange, src/dst, and/or/not,
/// parentheses, TCP flags, ip6, vlan, greater/less. Addresses and ports are
/// ones the shared captures contain, so most pairs keep some frames and
/// drop others.
pub const EXPRESSIONS: &[&str] = &[
    "host 172.16.16.139",
    "src host 172.16.16.140",
    "net 192.168.0.0/16",
    "dst net 10.0.0.0/8",
    "port 80",
    "tcp port 443 or tcp port 80",
    "src port 80",
    "dst port 21 or dst port 20",
    "portrange 1-1023",
    "tcp and not port 80",
    "(port 80 or port 8080) and not host 172.16.16.139",
    "tcp[tcpflags] & tcp-syn != 0",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
    "tcp[tcpflags] & tcp-rst != 0",
    "ip6",
    "ip6 and dst port 80",
    "not ip",
    "vlan",
    "vlan and tcp",
    "greater 100",
    "less 80",
    "ip[2:2] > 576",
    "ether host 00:0c:29:6f:9f:67 or ip6 host 2001:db8:1:2::1000",
];

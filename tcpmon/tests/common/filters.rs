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

/// A deterministic stream of pseudo-random numbers (xorshift64*), so a
/// failing generated case comes back on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A random expression of the primitives the issue names, combined with
/// `and`, `or`, `not` and parentheses, `depth` levels deep at most.
pub fn generated(rng: &mut Rng, depth: u32) -> String {
    if depth == 0 || rng.below(3) == 0 {
        return primitive(rng);
    }
    match rng.below(4) {
        0 => format!("not ({})", generated(rng, depth - 1)),
        1 => format!(
            "({}) or ({})",
            generated(rng, depth - 1),
            generated(rng, depth - 1)
        ),
        _ => format!(
            "({}) and ({})",
            generated(rng, depth - 1),
            generated(rng, depth - 1)
        ),
    }
}

fn primitive(rng: &mut Rng) -> String {
    const HOSTS: &[&str] = &[
        "172.16.16.139",
        "172.16.16.140",
        "10.0.0.1",
        "10.0.0.2",
        "192.168.1.5",
    ];
    const NETS: &[&str] = &[
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.1.0/24",
        "172.16.16.128/25",
    ];
    const PORTS: &[u16] = &[20, 21, 22, 80, 443, 1234, 5555, 8080, 40000];
    const DIRS: &[&str] = &["", "src ", "dst "];
    const PROTOS: &[&str] = &["", "tcp ", "udp "];
    const FLAGS: &[&str] = &["tcp-syn", "tcp-ack", "tcp-fin", "tcp-rst", "tcp-push"];
    let dir = *rng.pick(DIRS);
    match rng.below(13) {
        0 => format!("{dir}host {}", rng.pick(HOSTS)),
        1 => format!("{dir}net {}", rng.pick(NETS)),
        2 | 3 => format!("{}{dir}port {}", rng.pick(PROTOS), rng.pick(PORTS)),
        4 => {
            let lo = rng.below(40_000);
            format!("{dir}portrange {lo}-{}", lo + rng.below(25_000))
        }
        5 => match rng.below(3) {
            0 => "vlan".to_string(),
            1 => format!("vlan {}", rng.pick(&[7, 100, 200])),
            _ => format!("vlan and {}", primitive(rng)),
        },
        6 => match rng.below(3) {
            0 => "ip6".to_string(),
            1 => "ip6 host 2001:db8:1:2::1000".to_string(),
            _ => format!("ip6 and {}port {}", dir, rng.pick(PORTS)),
        },
        7 => format!("tcp[tcpflags] & {} != 0", rng.pick(FLAGS)),
        8 => format!(
            "tcp[tcpflags] & ({}|{}) == {}",
            rng.pick(FLAGS),
            rng.pick(FLAGS),
            rng.pick(FLAGS)
        ),
        9 => format!("len >= {}", rng.below(1600)),
        10 => format!("less {}", rng.below(1600)),
        11 => format!("greater {}", rng.below(1600)),
        _ => rng
            .pick(&["ip", "tcp", "udp", "arp", "ip[2:2] > 576", "ip[8] < 64"])
            .to_string(),
    }
}

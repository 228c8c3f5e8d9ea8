# Test script of nix/tests/cluster.nix, run by the NixOS test driver. The driver defines
# start_all, subtest and one object per machine (nats1, nats2, nats3, consul, redis, chat1,
# chat2, lb, client); scripts/check-nix checks this file with pyflakes, naming those as builtins.
import json
import shlex
import time
from typing import Any, Callable, Dict, List

Line = Dict[str, Any]

PASSWORD = "secret1"
NATS = [nats1, nats2, nats3]
CHAT = [chat1, chat2]


def parse(output: str) -> List[Line]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def client_command(addr: str, commands: List[str]) -> str:
    script = " ".join(f"-e {shlex.quote(c)}" for c in commands)
    return f"chat-zinx client {addr} --json --timeout 20s {script} </dev/null"


def run_client(addr: str, *commands: str) -> List[Line]:
    """Runs a scripted client to its end on the client machine; its JSON lines."""
    return parse(client.succeed(client_command(addr, list(commands))))


def spawn_client(name: str, addr: str, *commands: str) -> None:
    """Starts a scripted client in the background (it stays connected until the VM stops),
    writing its JSON lines to /tmp/<name>.jsonl."""
    # The last command waits for an event that never comes: the client stays online.
    cmd = client_command(addr, [*commands, "/wait never 1 3600000"])
    client.succeed(f"{cmd} >/tmp/{name}.jsonl 2>/tmp/{name}.err &")


def reply(lines: List[Line], cmd: str) -> Line:
    for v in lines:
        if v.get("type") == "reply" and v.get("cmd") == cmd:
            assert v.get("ok") is True, f"/{cmd} failed: {v}"
            return v
    raise AssertionError(f"no reply to /{cmd} in {lines}")


def wait_for(name: str, what: str, pred: Callable[[Line], bool], timeout: int = 120) -> Line:
    """Waits until the background client `name` printed a line matching `pred`."""
    deadline = time.monotonic() + timeout
    while True:
        lines = parse(client.succeed(f"cat /tmp/{name}.jsonl"))
        for v in lines:
            if pred(v):
                return v
        if time.monotonic() > deadline:
            _, err = client.execute(f"cat /tmp/{name}.err")
            raise AssertionError(
                f"{name}: no {what} within {timeout}s; it printed:\n"
                + "\n".join(json.dumps(v) for v in lines)
                + f"\nstderr:\n{err}"
            )
        time.sleep(1)


def logged_in(v: Line) -> bool:
    return v.get("type") == "reply" and v.get("cmd") == "login" and v.get("ok") is True


def push(msg_id: int, content: str) -> Callable[[Line], bool]:
    return lambda v: (
        v.get("type") == "push"
        and v.get("id") == msg_id
        and v.get("body", {}).get("content") == content
    )


def event(name: str, **fields: Any) -> Callable[[Line], bool]:
    return lambda v: v.get("type") == "event" and v.get("event") == name and all(
        v.get(k) == want for k, want in fields.items()
    )


def passing_chat_nodes() -> List[str]:
    out = consul.succeed("curl -sf 'http://127.0.0.1:8500/v1/health/service/chat-zinx?passing'")
    return sorted(entry["Service"]["ID"] for entry in json.loads(out))


def chat_addresses() -> Dict[str, str]:
    """node id -> the ip:port it advertises in Consul (what the load balancer connects to)."""
    out = consul.succeed("curl -sf 'http://127.0.0.1:8500/v1/health/service/chat-zinx?passing'")
    return {e["Service"]["ID"]: f'{e["Service"]["Address"]}:{e["Service"]["Port"]}' for e in json.loads(out)}


def lb_in_rotation() -> List[str]:
    """ip:port of every server haproxy sends new connections to: running, resolved, no
    maintenance or drain flag (show servers state, through the runtime API)."""
    out = lb.succeed(
        "echo 'show servers state chat_nodes' | socat stdio UNIX-CONNECT:/run/haproxy/admin.sock"
    )
    header: List[str] = []
    found = []
    for line in out.splitlines():
        if line.startswith("#"):
            header = line[1:].split()
            continue
        fields = line.split()
        if not header or len(fields) < len(header):
            continue
        f = dict(zip(header, fields))
        if (
            f["srv_addr"] != "-"
            and f["srv_op_state"] == "2"
            and int(f["srv_admin_state"]) & 0x3F == 0
        ):
            found.append(f'{f["srv_addr"]}:{f["srv_port"]}')
    return sorted(found)


def users_on(node: Any) -> int:
    """Logged-in users on a chat node (its /metrics)."""
    out = node.succeed("curl -sf http://127.0.0.1:9100/metrics")
    for line in out.splitlines():
        if line.startswith("chat_zinx_users "):
            return int(float(line.split()[1]))
    raise AssertionError(f"no chat_zinx_users in the metrics of {node.name}")


def wait_until(what: str, check: Callable[[], bool], timeout: int = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(1)


start_all()

with subtest("NATS (JetStream, 3 servers clustered), Consul and Redis are up"):
    for n in NATS:
        n.wait_for_unit("nats.service")
    for n in NATS:
        n.wait_until_succeeds("curl -sf http://127.0.0.1:8222/healthz", timeout=180)

    def meta_cluster_of_three() -> bool:
        jsz = json.loads(nats1.succeed("curl -sf http://127.0.0.1:8222/jsz"))
        meta = jsz.get("meta_cluster", {})
        return bool(meta.get("leader")) and meta.get("cluster_size") == 3

    wait_until("a JetStream meta leader among 3 servers", meta_cluster_of_three)

    consul.wait_for_unit("consul.service")
    consul.wait_until_succeeds("curl -sf http://127.0.0.1:8500/v1/status/leader | grep -q ':8300'")
    redis.wait_for_unit("redis.service")
    redis.wait_for_open_port(6379)

with subtest("both chat nodes are ready under systemd and registered in Consul"):
    for n in CHAT:
        # Type=notify: active means the daemon said READY=1 (listeners open, backends answer).
        n.wait_for_unit("chat-zinx.service", timeout=300)
        n.succeed("systemctl is-active chat-zinx.socket chat-zinx-http.socket")
        n.succeed("curl -sf http://127.0.0.1:9100/ready")
        # The watchdog is armed.
        n.succeed("systemctl show -p WatchdogUSec chat-zinx.service | grep -qv '=0$'")
    wait_until("chat1 and chat2 passing in Consul", lambda: passing_chat_nodes() == ["chat1", "chat2"])
    services = json.loads(
        consul.succeed("curl -sf 'http://127.0.0.1:8500/v1/health/service/chat-zinx?passing'")
    )
    for entry in services:
        svc = entry["Service"]
        # The advertised address is the node's IP (the load balancer needs one).
        assert svc["Address"].count(".") == 3 and svc["Port"] == 9000, svc
        assert "chat" in svc["Tags"], svc

with subtest("accounts registered on one node are known on the other"):
    client.wait_for_unit("multi-user.target")
    reply(run_client("chat1:9000", f"/register alice {PASSWORD} alice@example.org"), "register")
    reply(run_client("chat2:9000", f"/register bob {PASSWORD} bob@example.org"), "register")
    reply(run_client("chat1:9000", f"/register carol {PASSWORD} carol@example.org"), "register")
    reply(run_client("chat2:9000", f"/login alice {PASSWORD}"), "login")
    reply(run_client("chat1:9000", f"/login bob {PASSWORD}"), "login")

with subtest("a client chats over TLS, and Consul advertises the TLS port"):
    for n in CHAT:
        n.succeed("systemctl is-active chat-zinx-tls.socket")
    tls = "--tls --ca /etc/chat-zinx-test-ca.pem"
    lines = run_client(f"chat1:9443 {tls}", f"/login alice {PASSWORD}", "/msg bob over tls")
    connected = [v for v in lines if v.get("event") == "connected"]
    assert connected and connected[0]["addr"] == "tls://chat1:9443", lines
    assert reply(lines, "msg")["ok"], lines
    # A CA the client does not know: the handshake fails, no chat.
    client.fail(client_command("chat2:9443 --tls", [f"/login alice {PASSWORD}"]))
    services = json.loads(
        consul.succeed("curl -sf 'http://127.0.0.1:8500/v1/health/service/chat-zinx?passing'")
    )
    for entry in services:
        assert entry["Service"]["Meta"].get("tls_port") == "9443", entry

with subtest("a group made on chat1, joined from both nodes"):
    created = reply(
        run_client("chat1:9000", f"/login alice {PASSWORD}", "/creategroup team"), "creategroup"
    )
    gid = created["body"]["id"]
    reply(run_client("chat2:9000", f"/login bob {PASSWORD}", f"/joingroup {gid}"), "joingroup")
    reply(run_client("chat1:9000", f"/login carol {PASSWORD}", f"/joingroup {gid}"), "joingroup")

with subtest("direct and group messages cross the nodes"):
    spawn_client("bob", "chat2:9000", f"/login bob {PASSWORD}")
    spawn_client("carol", "chat1:9000", f"/login carol {PASSWORD}")
    wait_for("bob", "login", logged_in)
    wait_for("carol", "login", logged_in)
    spawn_client(
        "alice",
        "chat1:9000",
        f"/login alice {PASSWORD}",
        "/msg bob hello from chat1",
        f"/groupmsg {gid} hello team",
    )
    connected = wait_for("alice", "connection", event("connected"))
    assert connected["server"]["node_id"] == "chat1", connected
    wait_for("alice", "login", logged_in)
    # alice on chat1 -> bob on chat2: NATS bus, Redis presence.
    wait_for("bob", "alice's direct message", push(208, "hello from chat1"))
    # The group message reaches bob on the other node and carol on the same node.
    wait_for("bob", "the group message", push(312, "hello team"))
    wait_for("carol", "the group message", push(312, "hello team"))

with subtest("v1 clients chat through the load balancer, one on each node"):
    lb.wait_for_unit("haproxy.service")
    lb.wait_for_open_port(9000)
    addrs = chat_addresses()
    wait_until(
        "both chat nodes in the load balancer's rotation",
        lambda: lb_in_rotation() == sorted(addrs.values()),
    )
    v1 = "lb:9000 --v1"
    for name in ["dave", "erin", "frank"]:
        reply(run_client(v1, f"/register {name} {PASSWORD} {name}@example.org"), "register")
    before = [users_on(n) for n in CHAT]
    spawn_client("dave", v1, f"/login dave {PASSWORD}")
    wait_for("dave", "login", logged_in)
    # Least connections: dave holds a connection to one node, so erin goes to the other.
    spawn_client("erin", v1, f"/login erin {PASSWORD}", "/msg dave hello through the balancer")
    wait_for("erin", "login", logged_in)
    wait_for("dave", "erin's message", push(208, "hello through the balancer"))
    wait_until(
        "dave and erin on different nodes",
        lambda: [users_on(n) - b for n, b in zip(CHAT, before)] == [1, 1],
    )
    # The balancer sends the PROXY protocol and the nodes trust it (server.proxy_protocol_from):
    # a login is logged with the client machine's address (PEER), never the balancer's.
    lb_ip = chat1.succeed("getent ahostsv4 lb | head -n1 | cut -d' ' -f1").strip()
    client_ip = chat1.succeed("getent ahostsv4 client | head -n1 | cut -d' ' -f1").strip()
    for machine in (chat1, chat2):
        machine.succeed(f"journalctl -u chat-zinx -o verbose | grep -q 'PEER={client_ip}$'")
        machine.succeed(f"! journalctl -u chat-zinx -o verbose | grep -q 'PEER={lb_ip}$'")

with subtest("chat1 stops: it leaves Consul and its users resume on chat2"):
    chat1.systemctl(
        "stop chat-zinx.socket chat-zinx-http.socket chat-zinx-tls.socket chat-zinx.service"
    )
    # The drain finished within TimeoutStopSec (a clean stop, not a kill).
    chat1.succeed("systemctl show -p Result chat-zinx.service | grep -qx Result=success")
    wait_until("only chat2 passing in Consul", lambda: passing_chat_nodes() == ["chat2"])
    for name in ["alice", "carol"]:
        moved = wait_for(name, "a reconnect", event("reconnected"))
        assert moved["server"]["node_id"] == "chat2", moved
        # The session resumed with its login token: chat2 accepts chat1's tokens.
        wait_for(name, "a resumed session", event("resumed", via="token"))
    reply(
        run_client("chat2:9000", f"/login bob {PASSWORD}", "/msg alice welcome to chat2"), "msg"
    )
    wait_for("alice", "bob's message on chat2", push(208, "welcome to chat2"))
    reply(run_client("chat2:9000", f"/login bob {PASSWORD}", f"/groupmsg {gid} still here"), "groupmsg")
    wait_for("alice", "the group message on chat2", push(312, "still here"))
    wait_for("carol", "the group message on chat2", push(312, "still here"))
    # History written through chat1 is served by chat2 (JetStream, replicated).
    history = reply(run_client("chat2:9000", f"/login bob {PASSWORD}", "/history alice 10"), "history")
    assert "hello from chat1" in json.dumps(history["body"]), history

with subtest("after chat1's drain, new v1 connections through the load balancer go to chat2"):
    wait_until(
        "only chat2 in the load balancer's rotation", lambda: lb_in_rotation() == [addrs["chat2"]]
    )
    for i in range(4):
        # Every connection succeeds (chat1 is gone: none is sent there) and chats.
        reply(run_client(v1, f"/login frank {PASSWORD}", f"/msg bob through the balancer {i}"), "login")
        wait_for("bob", f"frank's message {i}", push(208, f"through the balancer {i}"))

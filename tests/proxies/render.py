"""Renders the committed proxy configs (deploy/envoy/envoy.yaml, deploy/nginx/nginx.conf; and
tests/proxies/haproxy-h2.cfg, tried and not supported) for a test run or a static check.

A rendering is the committed file with only its addresses changed: the listener on a loopback port, the replicas
as loopback endpoints, the pid and log files in a scratch directory. A test that wants another setting (a
control with the proxy's default timeouts, a short idle timeout) says which directive to drop or set; every
such edit must match the committed file exactly once, so a change to the committed file that a test relies on
fails loudly instead of silently testing something else.
"""

import copy
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ENVOY = REPO / "deploy/envoy/envoy.yaml"
NGINX = REPO / "deploy/nginx/nginx.conf"
HAPROXY = Path(__file__).resolve().parent / "haproxy-h2.cfg"  # tried, not supported: see that file


# ---------------------------------------------------------------------------------------------------- Envoy

def envoy_config(replicas, listen_port=0, admin_port=0):
    """The committed Envoy config as a dict, pointed at `replicas` ([(host, port)]): a STATIC cluster of
    those endpoints instead of the headless Service, the listener and admin on loopback."""
    config = yaml.safe_load(ENVOY.read_text())
    config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": admin_port}
    [listener] = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen_port}
    [cluster] = config["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS", cluster["type"]
    cluster["type"] = "STATIC"
    cluster.pop("dns_lookup_family", None)
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for host, port in replicas]}]
    return config


def envoy_hcm(config):
    """The HTTP connection manager's typed_config of the one listener."""
    [listener] = config["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [hcm] = chain["filters"]
    return hcm["typed_config"]


def envoy_route(config):
    """The `route` action of the one route."""
    [vhost] = envoy_hcm(config)["route_config"]["virtual_hosts"]
    [route] = vhost["routes"]
    return route["route"]


def envoy_render(replicas, listen_port=0, admin_port=0, edit=None):
    config = envoy_config(replicas, listen_port, admin_port)
    if edit:
        config = copy.deepcopy(config)
        edit(config)
    return yaml.safe_dump(config, sort_keys=False)


# ---------------------------------------------------------------------------------------------------- text

def _directive(text, name, value=None, *, count=1):
    """Sets (value) or drops (None) a `name ...;` directive (nginx) that must occur `count` times."""
    pattern = re.compile(rf"^([ \t]*){re.escape(name)}[ \t][^;\n]*;[ \t]*\n", re.M)
    found = len(pattern.findall(text))
    assert found == count, f"{name}: {found} occurrences, expected {count}"
    if value is None:
        return pattern.sub("", text)
    return pattern.sub(lambda m: f"{m.group(1)}{name} {value};\n", text)


def nginx_render(replicas, listen_port, workdir, drop=(), set=None):
    """The committed nginx config, listening on 127.0.0.1:listen_port, with `replicas` ([(host, port)]) as
    the upstream servers (same parameters as the committed ones) and pid/logs under `workdir`."""
    text = NGINX.read_text()
    servers = re.findall(r"^([ \t]*)server forkpool-\d+:\d+( [^;\n]*)?;[ \t]*\n", text, re.M)
    assert len(servers) >= 1, "no `server forkpool-N:PORT` lines in nginx.conf"
    indent, params = servers[0]
    lines = "".join(f"{indent}server {host}:{port}{params};\n" for host, port in replicas)
    text = re.sub(r"^[ \t]*server forkpool-\d+:\d+( [^;\n]*)?;[ \t]*\n", "", text, flags=re.M)
    text = re.sub(r"(^[ \t]*least_conn;[ \t]*\n)", lambda m: m.group(1) + lines, text, count=1, flags=re.M)
    text = _directive(text, "listen", f"127.0.0.1:{listen_port} http2")
    text = _directive(text, "pid", f"{workdir}/nginx.pid")
    text = _directive(text, "error_log", f"{workdir}/error.log info")
    text = _directive(text, "access_log", f"{workdir}/access.log grpc")
    for name in drop:
        text = _directive(text, name, None)
    for name, value in (set or {}).items():
        text = _directive(text, name, value)
    # Scratch space of its own (nginx's compiled-in temp paths are shared by every instance).
    temp = "".join(f"    {kind}_temp_path {workdir}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = re.sub(r"^http \{\n", lambda m: m.group(0) + temp, text, count=1, flags=re.M)
    return text


def nginx_check_copy():
    """The committed nginx config with only the replica names replaced by 127.0.0.1, for `nginx -t` on a
    machine where forkpool-0... do not resolve (nginx resolves upstream names while checking)."""
    text = NGINX.read_text()
    text, n = re.subn(r"(server )forkpool-\d+(:\d+)", r"\g<1>127.0.0.1\2", text)
    assert n >= 1
    return text


def _haproxy_line(text, prefix, value=None):
    """Sets (value: the whole new line) or drops a line starting with `prefix` (after indentation); exactly
    one must match."""
    pattern = re.compile(rf"^([ \t]*){re.escape(prefix)}(?:[ \t][^\n]*)?\n", re.M)
    found = len(pattern.findall(text))
    assert found == 1, f"{prefix}: {found} occurrences, expected 1"
    if value is None:
        return pattern.sub("", text)
    return pattern.sub(lambda m: f"{m.group(1)}{value}\n", text)


def haproxy_render(replicas, listen_port, drop=(), set=None):
    """The committed HAProxy config on 127.0.0.1:listen_port with `replicas` as servers (the template's
    proto and check parameters, without DNS discovery)."""
    text = HAPROXY.read_text()
    template = re.search(r"^([ \t]*)server-template \S+ \d+ \S+ ([^\n]*)\n", text, re.M)
    assert template, "no server-template line in haproxy.cfg"
    indent, params = template.group(1), template.group(2)
    params = re.sub(r" resolvers \S+| init-addr \S+", "", params)
    servers = "".join(f"{indent}server forkpool-{i} {host}:{port} {params}\n"
                      for i, (host, port) in enumerate(replicas))
    text = text[:template.start()] + servers + text[template.end():]
    text = _haproxy_line(text, "bind", f"bind 127.0.0.1:{listen_port} proto h2")
    for prefix in drop:
        text = _haproxy_line(text, prefix, None)
    for prefix, line in (set or {}).items():
        text = _haproxy_line(text, prefix, line)
    return text


def haproxy_tcp(replicas, listen_port, balance="roundrobin"):
    """An L4 (TCP) balancer: what a Kubernetes ClusterIP Service does (one replica per connection, chosen
    when the connection opens). Not a committed config: the stand-in for kube-proxy in the
    max_connection_age test."""
    servers = "".join(f"    server r{i} {host}:{port} check inter 500ms fall 1 rise 1\n"
                      for i, (host, port) in enumerate(replicas))
    return f"""global
    log stderr format raw local0 notice
defaults
    mode tcp
    log global
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    timeout check 1s
frontend l4
    bind 127.0.0.1:{listen_port}
    default_backend replicas
backend replicas
    balance {balance}
    retries 3
    option redispatch 1
{servers}"""

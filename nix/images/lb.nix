# Role lb: HAProxy in front of the chat nodes, for clients that connect to one address (the
# original v1 clients): deploy/haproxy/haproxy.cfg as it is (tests/load_balancer.rs runs the
# same file). TCP on port 9000, least connections, the chat nodes from the Consul server's DNS
# (the host name consul, port 8600; SRV records of the passing chat-zinx instances), resolved
# every second: a draining, stopped or critical node leaves rotation within about a second of
# leaving Consul's answers. The chat nodes must advertise an IP address
# (server.advertise_addr), as the Terraform env does: HAProxy resolves SRV targets through
# Consul only. It sends the PROXY protocol (v2) to the nodes, which must trust its address
# (server.proxy_protocol_from; the Terraform env sets it on every chat node). Nothing per
# machine: no cloud-init files (the host name only).
{
  services.haproxy = {
    enable = true;
    config = builtins.readFile ../../deploy/haproxy/haproxy.cfg;
  };
  systemd.services.haproxy = {
    # The file's defaults (presetenv) but for where Consul's DNS is: a host name, resolved
    # once when haproxy starts (Restart=always tries again until it resolves).
    environment.CZ_LB_CONSUL_DNS = "consul:8600";
    after = [ "cloud-init.service" ];
    wants = [ "cloud-init.service" ];
  };
  networking.firewall.allowedTCPPorts = [ 9000 ];
}

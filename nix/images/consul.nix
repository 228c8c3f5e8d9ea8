# Role consul: a single Consul server (discovery and live settings of the chat nodes). Its
# HTTP API listens on every address; keep the port closed to anything but the chat nodes (the
# firewall of the deployment's network) or turn ACLs on and give the chat nodes a token. Its
# DNS interface (port 8600, UDP and TCP) is where the load balancer (role lb) finds the chat
# nodes: it answers with passing instances only (dns_config.only_passing), so a node whose
# check is warning or critical is not in the answers.
{
  services.consul = {
    enable = true;
    webUi = true;
    extraConfig = {
      server = true;
      bootstrap_expect = 1;
      client_addr = "0.0.0.0";
      dns_config.only_passing = true;
    };
  };
  networking.firewall.allowedTCPPorts = [ 8500 8600 ];
  networking.firewall.allowedUDPPorts = [ 8600 ];
}

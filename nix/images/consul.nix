# Role consul: a single Consul server (discovery and live settings of the chat nodes). Its
# HTTP API listens on every address; keep the port closed to anything but the chat nodes (the
# firewall of the deployment's network) or turn ACLs on and give the chat nodes a token.
{
  services.consul = {
    enable = true;
    webUi = true;
    extraConfig = {
      server = true;
      bootstrap_expect = 1;
      client_addr = "0.0.0.0";
    };
  };
  networking.firewall.allowedTCPPorts = [ 8500 ];
}

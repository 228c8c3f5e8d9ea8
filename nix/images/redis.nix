# Role redis: presence of the chat nodes. Listens on every address with a password, which
# cloud-init writes to /etc/redis/password (mode 0600) at first boot.
{
  services.redis.servers."" = {
    enable = true;
    bind = null;
    port = 6379;
    openFirewall = true;
    requirePassFile = "/etc/redis/password";
  };
  systemd.services.redis = {
    after = [ "cloud-init.service" ];
    wants = [ "cloud-init.service" ];
  };
}

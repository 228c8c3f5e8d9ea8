# The deployment roles as NixOS configurations (nixosConfigurations.<role>) and their qcow2
# disk images (packages.x86_64-linux.image-<role>), which the Terraform deployment boots.
#
# The images are generic: what differs between two machines of a role (host name, SSH keys,
# secrets, a chat node's id and advertised address) comes at first boot from cloud-init
# (NoCloud or config-drive user data, `write_files`), see the README's "Nix" section.
{ nixpkgs, chatZinxModule }:

let
  inherit (nixpkgs) lib;
  roles = [ "nats" "consul" "redis" "chat" "lb" ];
in
lib.genAttrs roles (role: lib.nixosSystem {
  specialArgs = { inherit role; };
  modules = [
    chatZinxModule
    ./common.nix
    (./. + "/${role}.nix")
  ];
})

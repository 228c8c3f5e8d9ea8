{
  description = "chat-zinx: a lean, distributed chat daemon (chat-zinx wire protocol)";

  # nixos-25.11 or newer: Cargo.lock needs Rust 1.89 or later.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [ "x86_64-linux" "aarch64-linux" ];

      # Consul is BSL-licensed, unfree in nixpkgs: allowed by name (dev shell, VM test and the
      # consul image need it), nothing else.
      allowUnfreePredicate = pkg: lib.getName pkg == "consul";

      pkgsFor = system: import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
        config = { inherit allowUnfreePredicate; };
      };
      forAllSystems = f: lib.genAttrs systems (system: f (pkgsFor system));

      roles = import ./nix/images {
        inherit nixpkgs;
        chatZinxModule = self.nixosModules.default;
      };
    in
    {
      overlays.default = final: _prev: {
        chat-zinx = final.callPackage ./nix/package.nix { };
      };

      packages = lib.recursiveUpdate
        (forAllSystems (pkgs: {
          default = pkgs.chat-zinx;
          inherit (pkgs) chat-zinx;
        }))
        {
          x86_64-linux = lib.mapAttrs'
            (role: system: lib.nameValuePair "image-${role}" system.config.system.build.qcow2)
            roles;
        };

      # `nix run`: `chat-zinx` without a subcommand is `chat-zinx serve`, on the built-in
      # defaults (in-process backends). `nix run . -- client` runs the client.
      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = lib.getExe pkgs.chat-zinx;
          meta.description = "Run the chat-zinx daemon (chat-zinx serve) on its built-in defaults";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/devshell.nix { };
      });

      # `nix fmt`: nixfmt (the official Nix formatter, RFC 166 style) on every .nix file of the
      # tree, through treefmt (nixfmt-tree), so that it needs no paths.
      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);

      # The package defaults to the system's pkgs.chat-zinx (an overlay, this flake's
      # overlays.default or the user's, applies), else it is built with the system's nixpkgs.
      nixosModules.default = ./nix/module.nix;

      nixosConfigurations = roles;

      checks = lib.recursiveUpdate
        (forAllSystems (pkgs: {
          package = pkgs.chat-zinx;
          devShell = self.devShells.${pkgs.stdenv.hostPlatform.system}.default;
          module = import ./nix/tests/module-eval.nix {
            inherit pkgs;
            chatZinxModule = self.nixosModules.default;
          };
          formatting = pkgs.runCommand "chat-zinx-nix-formatting" { } ''
            ${lib.getExe pkgs.nixfmt} --check ${./flake.nix} ${./nix}
            touch $out
          '';
        }))
        {
          # The VM test needs KVM.
          x86_64-linux.cluster = import ./nix/tests/cluster.nix {
            pkgs = pkgsFor "x86_64-linux";
            chatZinxModule = self.nixosModules.default;
          };
        };
    };
}

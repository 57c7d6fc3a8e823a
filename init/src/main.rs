//! carapace-init on its own: the initrd's `/init` (stage 1), which needs
//! none of the agents the node's multi-call binary also carries.

fn main() {
    carapace_init::main()
}

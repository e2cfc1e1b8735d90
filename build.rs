//! Link arguments of the init binary: a static ELF with our own start-up.

fn main() {
    // Our `_start` is the entry; no crt1.o, crti.o or crtbegin.o.
    println!("cargo:rustc-link-arg-bin=pid1=-nostartfiles");
    // No libc, no libgcc: the init provides the few symbols it needs.
    println!("cargo:rustc-link-arg-bin=pid1=-nostdlib");
    // Static and at a fixed address: no loader, no relocation at start-up.
    println!("cargo:rustc-link-arg-bin=pid1=-static");
    println!("cargo:rustc-link-arg-bin=pid1=-no-pie");
    // The section layout (see the script's comments).
    println!("cargo:rustc-link-arg-bin=pid1=-Wl,-T,{}/linker/pid1.ld", env!("CARGO_MANIFEST_DIR"));
    // No build-id note: same sources, same bytes.
    println!("cargo:rustc-link-arg-bin=pid1=-Wl,--build-id=none");
    // Drop every function and datum nothing reaches.
    println!("cargo:rustc-link-arg-bin=pid1=-Wl,--gc-sections");
    println!("cargo:rerun-if-changed=linker/pid1.ld");
}

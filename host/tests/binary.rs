//! The init binary itself: a static, non-PIE x86_64 ELF with no dynamic
//! section and no interpreter, small enough to matter.

mod common;

/// Program header types that would mean a dynamic loader gets involved.
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn init_is_a_static_non_pie_elf_without_libc() {
    let elf = std::fs::read(common::init_binary()).unwrap();
    assert_eq!(&elf[..5], b"\x7fELF\x02", "64-bit ELF");
    assert_eq!(u16_at(&elf, 16), ET_EXEC, "ET_EXEC: not position-independent");
    let (phoff, phentsize, phnum) = (
        usize::try_from(u64_at(&elf, 32)).unwrap(),
        usize::from(u16_at(&elf, 54)),
        usize::from(u16_at(&elf, 56)),
    );
    let mut loads = Vec::new();
    for i in 0..phnum {
        let ph = &elf[phoff + i * phentsize..];
        let (kind, flags) = (u32_at(ph, 0), u32_at(ph, 4));
        assert!(kind != PT_DYNAMIC && kind != PT_INTERP, "program header {i} is dynamic or an interpreter");
        if kind == 1 {
            loads.push(flags);
        }
    }
    // Exactly one R+X and one R+W segment: no page both writable and executable.
    assert_eq!(loads, vec![5, 6]);
    for needle in [&b"GLIBC_"[..], b"libc.so", b"ld-linux"] {
        assert!(
            !elf.windows(needle.len()).any(|w| w == needle),
            "{:?} inside",
            String::from_utf8_lossy(needle)
        );
    }
    assert!(elf.len() <= 64 * 1024, "{} bytes: over the 64 KiB budget", elf.len());
}

//! Whether every byte of a text is in a class, checked the way the compiler vectorises it: a
//! fold without an early exit over 64-byte chunks (a chunk with a byte outside the class ends
//! the check). A byte-at-a-time `all` exits early and runs one byte per step: 861 ns against
//! 53 ns for an Entra token of 1,129 bytes.
//!
//! Owns: that loop. Must not: define the classes (bearer tokens, log fields, minted tokens are
//! their callers' rules).

/// Whether every byte of `bytes` is in `class`.
#[inline]
pub fn all(bytes: &[u8], class: impl Fn(u8) -> bool) -> bool {
    let whole = |chunk: &[u8]| chunk.iter().fold(true, |ok, &b| ok & class(b));
    // A short text (a log field) in one fold: the chunk iterator would cost more than it saves.
    match bytes.len() <= CHUNK {
        true => whole(bytes),
        false => bytes.chunks(CHUNK).all(whole),
    }
}

const CHUNK: usize = 64;

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_answer_as_a_byte_at_a_time_check_wherever_the_odd_byte_is() {
        let class = |b: u8| b.is_ascii_lowercase();
        for len in [0, 1, 63, 64, 65, 128, 200] {
            let clean = vec![b'a'; len];
            assert!(super::all(&clean, class), "len {len}");
            for at in 0..len {
                let mut odd = clean.clone();
                odd[at] = b'A';
                assert!(!super::all(&odd, class), "len {len}, odd byte at {at}");
            }
        }
    }
}

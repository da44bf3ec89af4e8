//! What the guest image prints on its serial console (the contract of
//! `dev-tools/guest-image.sh`), for the accelerator probe and for whoever reads a console: tests,
//! benchmarks, tools. Match these as substrings; a shell prompt can share a line with them.

/// Printed once per boot, followed by the hostname from the kernel command line, once the
/// guest listens to its ACPI power button: before it, a powerdown request is lost.
pub const BOOT_BANNER: &str = "HALYARD-GUEST BOOTED hostname=";

/// Printed about 4 times a second, followed by a counter that starts at 1 at boot.
pub const HEARTBEAT: &str = "HALYARD-HEARTBEAT n=";

/// The heartbeat counters in console text, in the order printed.
pub fn heartbeats(text: &str) -> Vec<u64> {
    text.match_indices(HEARTBEAT)
        .filter_map(|(at, _)| {
            let digits: String = text[at + HEARTBEAT.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// Finds the boot banner in console output read in chunks of any size (a banner split between
/// two reads is found too).
#[derive(Debug, Default)]
pub struct BannerScanner {
    /// The end of the output so far, shorter than the banner: where a split banner begins.
    tail: Vec<u8>,
}

impl BannerScanner {
    /// Whether the banner ends in `chunk` (with what came before it).
    pub fn saw_banner(&mut self, chunk: &[u8]) -> bool {
        let banner = BOOT_BANNER.as_bytes();
        self.tail.extend_from_slice(chunk);
        let found = self
            .tail
            .windows(banner.len())
            .any(|window| window == banner);
        let keep = banner.len() - 1;
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_read_in_order_even_after_a_prompt() {
        let text = "\r\nHALYARD-GUEST BOOTED hostname=web\r\nHALYARD-HEARTBEAT n=1\r\n\
                    web# HALYARD-HEARTBEAT n=2\r\nHALYARD-HEARTBEAT n=";
        assert_eq!(heartbeats(text), vec![1, 2]);
        assert!(text.contains(&format!("{BOOT_BANNER}web")));
    }

    #[test]
    fn the_banner_is_found_however_the_output_is_cut() {
        let output = b"booting...\r\nHALYARD-GUEST BOOTED hostname=web\r\nHALYARD-HEARTBEAT n=1";
        for size in 1..output.len() {
            let mut scanner = BannerScanner::default();
            let found = output
                .chunks(size)
                .filter(|chunk| scanner.saw_banner(chunk))
                .count();
            assert_eq!(found, 1, "chunks of {size}");
        }
        let mut scanner = BannerScanner::default();
        assert!(!scanner.saw_banner(b"HALYARD-GUEST BOOT"));
        assert!(!scanner.saw_banner(b"ED? no: HALYARD-GUEST"));
    }
}

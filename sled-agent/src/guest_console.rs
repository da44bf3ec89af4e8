//! What the guest image prints on its serial console (the contract of
//! `dev-tools/guest-image.sh`), for the accelerator probe and for whoever reads a console: tests,
//! benchmarks, tools. Match these as substrings; a shell prompt can share a line with them.

/// Printed once per boot, followed by the hostname from the kernel command line.
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
}

//! The terminal taken over by a full-screen view (`kiln watch`), and given back.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set while a full-screen view is drawn on the terminal that stderr also writes to.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Whether log lines on stderr would now be drawn over a full-screen view (the binary's log
/// writer drops them meanwhile; the view shows what matters of them, such as a lost
/// connection, itself).
pub fn taken() -> bool {
    TAKEN.load(Ordering::Relaxed)
}

/// The terminal in raw mode on its alternate screen; restored on drop, on every way out.
pub(crate) struct Screen {
    terminal: ratatui::DefaultTerminal,
}

impl Screen {
    pub(crate) fn enter() -> std::io::Result<Self> {
        let terminal = ratatui::try_init()?;
        TAKEN.store(std::io::stderr().is_terminal(), Ordering::Relaxed);
        Ok(Screen { terminal })
    }

    pub(crate) fn terminal(&mut self) -> &mut ratatui::DefaultTerminal {
        &mut self.terminal
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
        TAKEN.store(false, Ordering::Relaxed);
    }
}

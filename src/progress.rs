//! Progress of a long read on stderr, shared by the CLI's `reference` and `report`: a bar
//! redrawn in place on a terminal, a line at each new tenth (and at the end) elsewhere.

use std::io::{IsTerminal, Write};

pub struct Progress {
    total: usize,
    done: usize,
    terminal: bool,
    last_tenth: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Progress {
            total,
            done: 0,
            terminal: std::io::stderr().is_terminal(),
            last_tenth: 0,
        }
    }

    /// Counts `n` more done. On a terminal: `\r{prefix}[bar] {label}`, the bar `width` wide in
    /// `fill`, a newline once all is done. Elsewhere: `line(done, total)` at each new tenth.
    pub fn advance(
        &mut self,
        n: usize,
        (prefix, width, fill): (&str, usize, &str),
        label: impl FnOnce(usize, usize) -> String,
        line: impl FnOnce(usize, usize),
    ) {
        self.done += n;
        let total = self.total.max(1);
        if self.terminal {
            let filled = (self.done * width / total).min(width);
            eprint!(
                "\r{prefix}[{}{}] {}",
                fill.repeat(filled),
                " ".repeat(width - filled),
                label(self.done, self.total)
            );
            let _ = std::io::stderr().flush();
            if self.done >= self.total {
                eprintln!();
            }
        } else {
            let tenth = self.done * 10 / total;
            if tenth > self.last_tenth || self.done == self.total {
                self.last_tenth = tenth;
                line(self.done, self.total);
            }
        }
    }
}

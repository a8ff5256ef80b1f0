//! Where a blocks render's values went: the byte ranges [`slack_formatter`]
//! wrote as JSON string content, for the Block Kit plans
//! ([`crate::slack::blockkit::Plans`]). The formatter cannot see the
//! output's length, so the render's writer keeps it in a thread-local that
//! the formatter reads before and after a value.
//!
//! Between those two reads only the formatter writes: what it wrote is the
//! escaped value, or nothing (when the value went into a capture, a
//! `{% set %}` block's, the main output did not move). A value written any
//! other way — `|safe`, a captured block or macro output (both safe), an
//! `{% autoescape %}` block, another escape mode — makes the render one
//! whose holes are not known, and it is checked in full.
//!
//! [`slack_formatter`]: super::slack_formatter

use std::cell::{Cell, RefCell};
use std::io;
use std::ops::Range;

use minijinja::{Template, Value as JinjaValue};

thread_local! {
    static RECORDING: Recording = const {
        Recording {
            active: Cell::new(false),
            len: Cell::new(0),
            known: Cell::new(true),
            holes: RefCell::new(Vec::new()),
        }
    };
}

struct Recording {
    /// A recorded render is under way on this thread.
    active: Cell<bool>,
    /// Bytes the render has written so far.
    len: Cell<usize>,
    /// No value was written other than as a hole.
    known: Cell<bool>,
    holes: RefCell<Vec<Range<usize>>>,
}

/// Renders `template` with `context`, recording the holes, and hands
/// `then` the text and its holes when every value was written as one (the
/// holes stay in the thread's buffer, reused from render to render).
pub(super) fn render<R>(
    template: &Template<'_, '_>,
    context: &JinjaValue,
    size_hint: usize,
    then: impl FnOnce(&str, Option<&[Range<usize>]>) -> R,
) -> Result<R, minijinja::Error> {
    let mut writer = Writer {
        out: Vec::with_capacity(size_hint),
    };
    {
        let _active = Active::start();
        // `render_captured_to`, its successor, builds a `Captured` (an
        // allocated cell holding the template and state) nobody reads.
        #[allow(deprecated)]
        template.render_to_write(context, &mut writer)?;
    }
    // The writer is handed `&str`s only; the check cannot fail.
    let text = String::from_utf8(writer.out).map_err(|_| {
        minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "render was not UTF-8")
    })?;
    Ok(RECORDING.with(|r| {
        let holes = r.holes.borrow();
        then(&text, r.known.get().then_some(&holes[..]))
    }))
}

/// The render's length when a render is being recorded on this thread:
/// the start of the value the formatter is about to write.
pub(super) fn start() -> Option<usize> {
    RECORDING.with(|r| r.active.get().then(|| r.len.get()))
}

/// The formatter wrote, since `start`, one value as JSON string content.
pub(super) fn hole(start: usize) {
    RECORDING.with(|r| r.holes.borrow_mut().push(start..r.len.get()));
}

/// The formatter wrote a value some other way.
pub(super) fn unknown() {
    RECORDING.with(|r| r.known.set(false));
}

/// Recording on this thread while it lives (also when the render panics).
struct Active;

impl Active {
    fn start() -> Active {
        RECORDING.with(|r| {
            r.active.set(true);
            r.len.set(0);
            r.known.set(true);
            r.holes.borrow_mut().clear();
        });
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        RECORDING.with(|r| r.active.set(false));
    }
}

struct Writer {
    out: Vec<u8>,
}

impl io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(bytes);
        RECORDING.with(|r| r.len.set(self.out.len()));
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

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

// Separate cells, none with a destructor: the formatter's checks are a
// plain thread-local load (a `Vec` in the same key would make every
// access check its destructor's registration).
thread_local! {
    /// A recorded render is under way on this thread.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Bytes the render has written so far.
    static LEN: Cell<usize> = const { Cell::new(0) };
    /// No value was written other than as a hole.
    static KNOWN: Cell<bool> = const { Cell::new(true) };
    static HOLES: RefCell<Vec<Range<usize>>> = const { RefCell::new(Vec::new()) };
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
    Ok(HOLES.with_borrow(|holes| then(&text, KNOWN.get().then_some(&holes[..]))))
}

/// The render's length when a render is being recorded on this thread:
/// the start of the value the formatter is about to write.
pub(super) fn start() -> Option<usize> {
    ACTIVE.get().then(|| LEN.get())
}

/// The formatter wrote, since `start`, one value as JSON string content.
pub(super) fn hole(start: usize) {
    HOLES.with_borrow_mut(|holes| holes.push(start..LEN.get()));
}

/// The formatter wrote a value some other way.
pub(super) fn unknown() {
    KNOWN.set(false);
}

/// Recording on this thread while it lives (also when the render panics).
struct Active;

impl Active {
    fn start() -> Active {
        ACTIVE.set(true);
        LEN.set(0);
        KNOWN.set(true);
        HOLES.with_borrow_mut(Vec::clear);
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.set(false);
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
        LEN.set(self.out.len());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

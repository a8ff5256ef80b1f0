//! Template names and sources kept for the life of the process.
//!
//! minijinja keeps a template added from borrowed text in a plain map; one
//! added as an owned `String` sits behind a lock, and every
//! `get_template` of it allocates its name and takes that lock — six times
//! per emitted alert, contended when a batch runs on several threads.
//! Pipelines are compiled once at start, and each distinct text is kept
//! once, so compiling the same configuration again (tests, `config check`)
//! adds nothing.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// `text`, kept for good.
pub(super) fn intern(text: &str) -> &'static str {
    static TEXTS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut texts = TEXTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(kept) = texts.get(text) {
        return kept;
    }
    let kept: &'static str = Box::leak(text.to_owned().into_boxed_str());
    texts.insert(kept);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_text_is_kept_once() {
        let first = intern("{{ key }}-interned-test");
        let again = intern(&String::from("{{ key }}-interned-test"));
        assert!(std::ptr::eq(first, again));
        assert_eq!(first, "{{ key }}-interned-test");
        assert!(!std::ptr::eq(first, intern("{{ key }}-other")));
    }
}

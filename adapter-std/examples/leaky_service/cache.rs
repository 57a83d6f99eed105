//! A session cache that never evicts: the leak.

use std::collections::HashMap;

/// What the service remembers about a user.
pub struct Session {
    pub user: String,
    pub history: Vec<u64>,
}

/// Sessions by id. Entries are added on every login and never removed.
#[derive(Default)]
pub struct SessionCache {
    sessions: HashMap<u64, Session>,
}

impl SessionCache {
    pub fn remember(&mut self, id: u64, user: &str) {
        let mut history = Vec::with_capacity(32); // the leaking line: never evicted
        history.push(id);
        self.sessions.insert(
            id,
            Session {
                user: user.to_owned(),
                history,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn user_bytes(&self) -> usize {
        self.sessions.values().map(|s| s.user.len()).sum()
    }

    pub fn history_len(&self) -> usize {
        self.sessions.values().map(|s| s.history.len()).sum()
    }
}

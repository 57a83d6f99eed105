//! Request handling: per-request buffers that are freed, beside the leaking cache.

use crate::cache::SessionCache;

pub struct Service {
    cache: SessionCache,
    served: u64,
}

impl Service {
    pub fn new() -> Service {
        Service {
            cache: SessionCache::default(),
            served: 0,
        }
    }

    /// One request: parse, render a response, and every tenth request log a user in.
    pub fn handle(&mut self, request: usize) {
        let body = render(request); // freed at the end of the request: not a leak
        let words: Vec<&str> = body.split(' ').collect();
        self.served += words.len() as u64;
        if request.is_multiple_of(10) {
            self.cache.remember(request as u64, words[1]);
        }
    }

    pub fn shutdown(self) {
        println!(
            "served {} words, {} sessions cached ({} bytes of user names, {} history entries)",
            self.served,
            self.cache.len(),
            self.cache.user_bytes(),
            self.cache.history_len()
        );
    }
}

fn render(request: usize) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("hello user");
    out.push_str(&request.to_string());
    out.push_str(" your request was served");
    out
}

//! The conversation history (the seed's ConversationRepository), in Redis.
//!
//! Key `mcpo:<instance>:chat:<session>` is a list of turns (Gemini `Content` JSON, stored
//! verbatim so model turns — including `thoughtSignature` — are replayed exactly), and
//! `...:chat-bytes:<session>` counts their bytes. Each append is one Lua script: push the
//! turns, then pop the oldest while the list is over its turn or byte budget. The store
//! deletes both keys with the session.

use redis::Script;
use serde_json::Value;

use crate::store::{Store, StoreError};

/// Bounds of one session's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most turns kept.
    pub max_turns: usize,
    /// Most bytes kept (JSON).
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_turns: 200,
            max_bytes: 1024 * 1024,
        }
    }
}

const APPEND_LUA: &str = r#"
for i = 1, #ARGV - 2 do
  redis.call('RPUSH', KEYS[1], ARGV[i])
  redis.call('INCRBY', KEYS[2], string.len(ARGV[i]))
end
local max_turns = tonumber(ARGV[#ARGV - 1])
local max_bytes = tonumber(ARGV[#ARGV])
while redis.call('LLEN', KEYS[1]) > 1 and
      (redis.call('LLEN', KEYS[1]) > max_turns or tonumber(redis.call('GET', KEYS[2]) or '0') > max_bytes) do
  local old = redis.call('LPOP', KEYS[1])
  redis.call('DECRBY', KEYS[2], string.len(old))
end
return redis.call('LLEN', KEYS[1])
"#;

/// The history repository.
#[derive(Clone)]
pub struct History {
    store: Store,
    limits: Limits,
    append: Script,
}

impl History {
    /// A repository in the store's Redis, under its instance prefix.
    pub fn new(store: Store, limits: Limits) -> History {
        History {
            store,
            limits,
            append: Script::new(APPEND_LUA),
        }
    }

    /// Append turns atomically (all or none), trimming the oldest beyond the limits.
    pub async fn append(&self, session: &str, turns: &[Value]) -> Result<(), StoreError> {
        if turns.is_empty() {
            return Ok(());
        }
        let (list, bytes) = self.store.chat_keys(session);
        let mut inv = self.append.key(list);
        inv.key(bytes);
        for t in turns {
            inv.arg(serde_json::to_string(t).unwrap_or_default());
        }
        inv.arg(self.limits.max_turns).arg(self.limits.max_bytes);
        let mut con = self.store.connection();
        let _: i64 = inv.invoke_async(&mut con).await?;
        Ok(())
    }

    /// Every kept turn exactly as stored, oldest first.
    pub async fn load_all(&self, session: &str) -> Result<Vec<Value>, StoreError> {
        let (list, _) = self.store.chat_keys(session);
        let mut con = self.store.connection();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(list)
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await?;
        Ok(raw
            .iter()
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect())
    }

    /// Every kept turn, oldest first. A history trimmed in the middle of a tool exchange
    /// starts at its first user text turn, so it never opens with an orphan function
    /// response.
    pub async fn load(&self, session: &str) -> Result<Vec<Value>, StoreError> {
        let turns = self.load_all(session).await?;
        let start = turns
            .iter()
            .position(|t| {
                t["role"] == "user"
                    && t["parts"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p.get("text").is_some()))
            })
            .unwrap_or(turns.len());
        Ok(turns[start..].to_vec())
    }

    /// Forget the conversation. Returns how many turns were removed.
    pub async fn clear(&self, session: &str) -> Result<usize, StoreError> {
        let (list, bytes) = self.store.chat_keys(session);
        let mut con = self.store.connection();
        let (n, _, _): (usize, (), ()) = redis::pipe()
            .atomic()
            .cmd("LLEN")
            .arg(&list)
            .cmd("DEL")
            .arg(&list)
            .cmd("DEL")
            .arg(&bytes)
            .query_async(&mut con)
            .await?;
        Ok(n)
    }
}

//! Accounts: registration, password and token login.

use super::*;
use crate::core::error::{ChatError, ChatResult};
use crate::core::model::*;
use crate::core::names::{check_new_name, normalize, NameKind};
use crate::core::throttle::address_key;
use std::net::IpAddr;

impl ChatCore {
    /// Registers a user. Empty fields are the protocol layer's business (they have their own
    /// reply); here the limits of `docs/protocol.md` §12.1 apply.
    pub async fn register(&self, username: &str, password: &str, email: &str) -> ChatResult<User> {
        self.register_from(None, username, password, email).await
    }

    /// [`Self::register`] from `source`: registrations per address are throttled
    /// ([`crate::core::throttle`]).
    pub async fn register_from(
        &self,
        source: Option<IpAddr>,
        username: &str,
        password: &str,
        email: &str,
    ) -> ChatResult<User> {
        if let Some(addr) = source.and_then(address_key) {
            // Every attempt counts, a refused one too (it extends the back-off).
            self.registrations.failed([addr.as_str()]);
            self.registrations
                .check([addr.as_str()])
                .map_err(|retry_after| ChatError::TooManyAttempts { retry_after })?;
        }
        check_len("username", username, 1, 50)?;
        let username = &check_new_name(NameKind::User, "username", username)?;
        if password.len() < 6 || password.len() > 128 {
            return Err(ChatError::Invalid(format!(
                "password must be 6 to 128 bytes (got {})",
                password.len()
            )));
        }
        check_len("email", email, 3, 100)?;
        if !email.contains('@') {
            return Err(ChatError::Invalid("email must contain an @".into()));
        }
        let store = &self.backends.store;
        if store.user_by_name(username).await?.is_some() {
            return Err(ChatError::UsernameTaken);
        }
        let hash = self
            .auth
            .hash_password(password.to_string())
            .await
            .map_err(|e| ChatError::Internal(e.to_string()))?;
        let user = store
            .create_user(NewUser {
                uuid: uuid::Uuid::new_v4().to_string(),
                username: username.to_string(),
                email: email.to_string(),
                password_hash: hash,
                created_at: self.now_ms(),
            })
            .await?;
        Ok(user)
    }

    pub async fn login_password(&self, username: &str, password: &str) -> ChatResult<LoginOk> {
        self.login_password_from(None, username, password).await
    }

    /// [`Self::login_password`] from `source`: failures are throttled per username and per
    /// address ([`crate::core::throttle`]); a blocked attempt is refused without work.
    pub async fn login_password_from(
        &self,
        source: Option<IpAddr>,
        username: &str,
        password: &str,
    ) -> ChatResult<LoginOk> {
        let user_key = format!("user:{}", normalize(username).to_lowercase());
        let addr_key = source.and_then(address_key);
        let keys = || std::iter::once(user_key.as_str()).chain(addr_key.as_deref());
        self.login_failures
            .check(keys())
            .map_err(|retry_after| ChatError::TooManyAttempts { retry_after })?;
        let result = self.check_password(username, password).await;
        match &result {
            Ok(_) => self.login_failures.succeeded([user_key.as_str()]),
            Err(ChatError::UnknownUser | ChatError::WrongPassword) => {
                self.login_failures.failed(keys())
            }
            Err(_) => {}
        }
        self.finish_login(result?).await
    }

    /// The user whose name and password these are; as much work for an unknown name as for a
    /// wrong password.
    async fn check_password(&self, username: &str, password: &str) -> ChatResult<User> {
        let Some(user) = self.user_by_name(username).await? else {
            if password.len() <= 128 {
                self.auth
                    .verify_nobody(password.to_string())
                    .await
                    .map_err(|e| ChatError::Internal(e.to_string()))?;
            }
            return Err(ChatError::UnknownUser);
        };
        // A password longer than any we accept cannot match: refuse before hashing it.
        if password.len() > 128 {
            return Err(ChatError::WrongPassword);
        }
        let ok = self
            .auth
            .verify_password(password.to_string(), user.password_hash.clone())
            .await
            .map_err(|e| ChatError::Internal(e.to_string()))?;
        if !ok {
            return Err(ChatError::WrongPassword);
        }
        Ok(user)
    }

    pub async fn login_token(&self, token: &str) -> ChatResult<LoginOk> {
        let claims = self
            .auth
            .verify_token(token, self.now_ms() / 1000)
            .map_err(|e| ChatError::BadToken(e.to_string()))?;
        let user = self
            .backends
            .store
            .user_by_id(claims.id)
            .await?
            .filter(|u| u.uuid == claims.user_uuid)
            .ok_or(ChatError::UnknownUser)?;
        let presented = claims.token_id();
        if user.is_revoked(&presented) {
            return Err(ChatError::BadToken(
                "the token was revoked (by a logout or an operator): log in with your password"
                    .into(),
            ));
        }
        let mut ok = self.finish_login(user).await?;
        ok.tokens.push(presented);
        Ok(ok)
    }

    /// Revokes a session's tokens on every node (a logout): a later token login with any of
    /// them is refused. The revocations live in the user's record until the tokens expire.
    pub async fn revoke_tokens(&self, me: &Me, tokens: &[TokenId]) -> ChatResult<()> {
        let now = self.now_ms() / 1000;
        for token in tokens {
            self.backends
                .store
                .revoke_token(me.id, token.clone(), now)
                .await?;
        }
        Ok(())
    }

    pub(in crate::core) async fn finish_login(&self, user: User) -> ChatResult<LoginOk> {
        let now = self.now_ms();
        let previous = self.backends.store.record_login(user.id, now).await?;
        let (token, issued) = self.auth.issue(&user, now / 1000);
        Ok(LoginOk {
            previous_login: previous.unwrap_or(user.created_at),
            user,
            token,
            tokens: vec![issued],
        })
    }

    /// The user named `name`: in its stored form (NFC, how names are stored since the name
    /// rules), else as written (a name stored before them).
    pub(in crate::core) async fn user_by_name(&self, name: &str) -> ChatResult<Option<User>> {
        let store = &self.backends.store;
        let normal = normalize(name);
        if let Some(u) = store.user_by_name(&normal).await? {
            return Ok(Some(u));
        }
        if normal != name {
            return Ok(store.user_by_name(name).await?);
        }
        Ok(None)
    }
}

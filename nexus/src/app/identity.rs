//! Identity as the external API offers it: the current user, the device login (OAuth 2.0
//! Device Authorization Grant) that gives a client a token for a user who confirmed it, and
//! the web console's sessions (an API token exchanged for a short-lived one).

use super::Nexus;
use crate::authn::OpContext;
use halyard_common::Error;
use halyard_db_model::{DeviceAuthRequest, Silo, SiloUser};
use halyard_db_queries::DeviceTokenPoll;
use halyard_db_queries::secret::{Secret, looks_like_device_code, looks_like_token};

impl Nexus {
    /// The user acting, with their silo.
    pub async fn current_user(&self, opctx: &OpContext) -> Result<(SiloUser, Silo), Error> {
        let (user_id, silo_id) = opctx
            .user()
            .ok_or_else(|| Error::internal("current_user called without a user acting"))?;
        let user = self.datastore().user_fetch(user_id).await?;
        let silo = self.datastore().silo_fetch(silo_id).await?;
        Ok((user, silo))
    }

    /// Starts a device login for a client (no caller yet).
    pub async fn device_auth_request_create(
        &self,
        client_id: uuid::Uuid,
        token_ttl_seconds: Option<u32>,
    ) -> Result<(DeviceAuthRequest, Secret), Error> {
        self.datastore()
            .device_auth_request_create(client_id, token_ttl_seconds)
            .await
    }

    /// The acting user confirms the device login whose user code they were shown.
    pub async fn device_auth_confirm(
        &self,
        opctx: &OpContext,
        user_code: &str,
    ) -> Result<(), Error> {
        let (user_id, _) = opctx
            .user()
            .ok_or_else(|| Error::internal("device_auth_confirm called without a user acting"))?;
        self.datastore()
            .device_auth_confirm(user_code, user_id)
            .await
    }

    /// Starts a console session for the user whose API token `token` is: a new token of
    /// theirs that expires after `lifetime`, returned this once (the session cookie's value).
    /// A token that does not authenticate is `Unauthenticated`, whatever the reason.
    pub async fn console_session_create(
        &self,
        token: &str,
        lifetime: chrono::TimeDelta,
    ) -> Result<Secret, Error> {
        let refused =
            || Error::unauthenticated("console sign-in with a token that does not authenticate");
        if !looks_like_token(token) {
            return Err(refused());
        }
        let owner = self
            .datastore()
            .token_authenticate(token)
            .await?
            .ok_or_else(refused)?;
        let (_, secret) = self
            .datastore()
            .token_create(owner.user.id(), Some(chrono::Utc::now() + lifetime))
            .await?;
        Ok(secret)
    }

    /// Ends the console session whose secret `session` is, if it is a live one.
    pub async fn console_session_end(&self, session: &str) -> Result<(), Error> {
        if !looks_like_token(session) {
            return Ok(());
        }
        if let Some(owner) = self.datastore().token_authenticate(session).await? {
            self.datastore().token_revoke(owner.token.id()).await?;
        }
        Ok(())
    }

    /// A client polls for the token of its device login.
    pub async fn device_access_token_poll(
        &self,
        client_id: uuid::Uuid,
        device_code: &str,
    ) -> Result<DeviceTokenPoll, Error> {
        if !looks_like_device_code(device_code) {
            return Ok(DeviceTokenPoll::Invalid);
        }
        self.datastore()
            .device_access_token_poll(client_id, device_code)
            .await
    }
}

impl Nexus {
    /// The user `name` of the default silo (created if absent), a fleet admin, and a new
    /// token for it that never expires: how the dev environment and test harnesses get a
    /// caller who may do everything. Operators use `omdb db users create [--fleet-role
    /// admin]` and `omdb db tokens create`.
    pub async fn default_silo_user_token(
        &self,
        name: &halyard_common::Name,
    ) -> Result<(SiloUser, Secret), Error> {
        self.datastore().default_silo_admin_token(name).await
    }
}

//! Typed entities: the [`Entity`] trait `#[entity]` implements, the client's
//! [`EntityHandle`], and the `entity::<E>(key)` doors on the orchestration context and the
//! client that hand out the generated proxies.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::DurableClient;
use crate::context::OrchestrationContext;
use crate::entity::EntityId;
use crate::error::Error;

/// A typed entity, implemented by `#[entity]`: its durable name, its state type and the
/// generated proxies that make calls and signals type-checked.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an entity",
    note = "annotate the state type's `impl` block (or the entity function) with `#[durable_core::entity]`"
)]
pub trait Entity: 'static {
    /// The durable name (lower-case).
    const NAME: &'static str;
    /// The state type, as clients read it.
    type State: Serialize + DeserializeOwned;
    /// Typed calls from an orchestration: one method per operation.
    type Calls: From<(OrchestrationContext, EntityId)>;
    /// Typed signals from a client: one async method per operation.
    type Signals: From<(DurableClient, EntityId)>;
}

/// A client's handle to one entity of type `E` (see [`DurableClient::entity`](crate::DurableClient::entity)).
pub struct EntityHandle<E: Entity> {
    client: DurableClient,
    id: EntityId,
    _e: PhantomData<fn() -> E>,
}

impl<E: Entity> fmt::Debug for EntityHandle<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl<E: Entity> EntityHandle<E> {
    pub(crate) fn new(client: DurableClient, key: String) -> Self {
        Self {
            client,
            id: EntityId::new(E::NAME, key),
            _e: PhantomData,
        }
    }

    /// The entity id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// Typed signals: `client.entity::<Counter>("c").signal().add(5).await?`.
    pub fn signal(&self) -> E::Signals {
        E::Signals::from((self.client.clone(), self.id.clone()))
    }

    /// Reads the state (a possibly stale snapshot); None when the entity does not exist.
    pub async fn read_state(&self) -> Result<Option<E::State>, Error> {
        self.client.read_entity_state(&self.id).await
    }
}

impl OrchestrationContext {
    /// Typed calls to the entity of type `E` with this key:
    /// `ctx.entity::<Counter>("game1").add(5).await?`.
    pub fn entity<E: Entity>(&self, key: impl Into<String>) -> E::Calls {
        E::Calls::from((self.clone(), EntityId::new(E::NAME, key)))
    }
}

impl DurableClient {
    /// A typed handle to the entity of type `E` with this key.
    pub fn entity<E: Entity>(&self, key: impl Into<String>) -> EntityHandle<E> {
        EntityHandle::new(self.clone(), key.into())
    }
}

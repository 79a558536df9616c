//! The Coordinator gRPC service: a thin adapter over `Registry`, with `RegistryError` mapped to
//! `Status` in one place, served on a pre-bound listener until a shutdown future resolves.

use std::future::Future;
use std::sync::Arc;

use pb::coordinator_server::{Coordinator, CoordinatorServer};
use peftrain_proto::v1 as pb;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::registry::{Registry, RegistryError};
use peftrain_net::{InterceptedService, Security};

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        let msg = e.to_string();
        match e {
            RegistryError::Protocol { .. } => Status::failed_precondition(msg),
            RegistryError::WrongRun { .. } => Status::failed_precondition(msg),
            RegistryError::Full { .. } => Status::resource_exhausted(msg),
            RegistryError::Mismatch { .. } | RegistryError::WrongModel { .. } => Status::failed_precondition(msg),
            RegistryError::BadRequest { .. } => Status::invalid_argument(msg),
        }
    }
}

pub struct CoordinatorService(pub Arc<Registry>);

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn hello(&self, req: Request<pb::HelloRequest>) -> Result<Response<pb::HelloReply>, Status> {
        Ok(Response::new(self.0.hello(req.get_ref())?))
    }

    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        let r = req.into_inner();
        let (id, address) = (r.worker_id.clone(), r.address.clone());
        match self.0.register(r) {
            Ok(reply) => {
                tracing::info!(worker = %id, worker_address = %address, "worker registered ({}/{})", reply.registered, reply.expected);
                Ok(Response::new(reply))
            }
            Err(e) => {
                tracing::warn!("{e}");
                Err(e.into())
            }
        }
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        Ok(Response::new(self.0.heartbeat(req.get_ref())))
    }
}

/// Why the Coordinator service could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS configuration is unusable: the service fails closed rather than serving plaintext.
    #[error("TLS: {0}")]
    Tls(#[from] peftrain_net::NetError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Largest message the coordinator accepts (registrations are small).
pub const MESSAGE_LIMIT: usize = 4 << 20;

/// Serves the Coordinator service (token required) and grpc.health.v1 (open, for probes) on
/// `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    security: &Security,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Before anything listens: a TLS configuration that cannot serve must not become plaintext.
    let tls = security.server_tls()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CoordinatorServer<CoordinatorService>>().await;
    let mut builder = peftrain_net::serve::server_builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    Ok(builder
        .add_service(health_service)
        .add_service(InterceptedService::new(
            CoordinatorServer::new(CoordinatorService(registry)).max_decoding_message_size(MESSAGE_LIMIT),
            security.server_auth(),
        ))
        .serve_with_incoming_shutdown(peftrain_net::serve::incoming(listener), shutdown)
        .await?)
}

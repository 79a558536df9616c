//! The Coordinator gRPC service: a thin adapter over `Registry`, with `RegistryError` mapped to
//! `Status` in one place, served on a pre-bound listener until a shutdown future resolves.

use std::future::Future;
use std::sync::Arc;

use peftrain_proto::v1 as pb;
use pb::coordinator_server::{Coordinator, CoordinatorServer};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::registry::{Registry, RegistryError};

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        let msg = e.to_string();
        match e {
            RegistryError::Protocol { .. } => Status::failed_precondition(msg),
            RegistryError::WrongRun { .. } => Status::failed_precondition(msg),
            RegistryError::Full { .. } => Status::resource_exhausted(msg),
            RegistryError::Mismatch { .. } => Status::failed_precondition(msg),
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
        let id = r.worker_id.clone();
        match self.0.register(r) {
            Ok(reply) => {
                tracing::info!(worker = %id, "worker registered ({}/{})", reply.registered, reply.expected);
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

/// Serves the Coordinator and grpc.health.v1 services on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CoordinatorServer<CoordinatorService>>().await;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(CoordinatorServer::new(CoordinatorService(registry)).max_decoding_message_size(16 << 20))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
}

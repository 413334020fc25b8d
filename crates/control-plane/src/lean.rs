//! linkerd2-proxy-api's servers with their long-lived streams (the watches
//! a proxy holds for its life) encoded with `mesh_api::lean::LeanCodec`,
//! whose buffers start small; every other method goes to the generated
//! server as before. The generated code fixes tonic's default codec (8 KiB
//! encode and decode buffers per stream), which a fleet of thousands of
//! proxies pays per watch.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use linkerd2_proxy_api::destination::destination_server::{Destination, DestinationServer};
use linkerd2_proxy_api::inbound::inbound_server_policies_server::{
    InboundServerPolicies, InboundServerPoliciesServer,
};
use linkerd2_proxy_api::outbound::outbound_policies_server::{
    OutboundPolicies, OutboundPoliciesServer,
};
use mesh_api::lean::LeanCodec;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

/// A service whose streaming methods are served leanly.
pub trait LeanRoutes: Send + Sync + Sized + 'static {
    /// The generated server, for every other method.
    type Generated: Clone + NamedService + Send + 'static;

    fn generated(svc: Arc<Self>) -> Self::Generated;

    /// The lean answer to `req`, or `req` back for the generated server.
    fn route<B>(
        svc: &Arc<Self>,
        req: http::Request<B>,
    ) -> Result<BoxFuture<http::Response<Body>, Infallible>, Box<http::Request<B>>>
    where
        B: HttpBody + Send + 'static,
        B::Error: Into<StdError> + Send + 'static;
}

/// `T`'s generated server with its watches served with the lean codec.
pub struct Lean<T: LeanRoutes> {
    svc: Arc<T>,
    inner: T::Generated,
}

impl<T: LeanRoutes> Lean<T> {
    pub fn new(svc: T) -> Self {
        let svc = Arc::new(svc);
        Self {
            inner: T::generated(svc.clone()),
            svc,
        }
    }
}

impl<T: LeanRoutes> Clone for Lean<T> {
    fn clone(&self) -> Self {
        Self {
            svc: self.svc.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<T: LeanRoutes> NamedService for Lean<T> {
    const NAME: &'static str = <T::Generated as NamedService>::NAME;
}

impl<T, B> Service<http::Request<B>> for Lean<T>
where
    T: LeanRoutes,
    T::Generated: Service<
            http::Request<B>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future = BoxFuture<http::Response<Body>, Infallible>,
        >,
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match T::route(&self.svc, req) {
            Ok(answer) => answer,
            Err(req) => self.inner.call(*req),
        }
    }
}

/// One server-streaming method as a function of the request.
struct Method<F, Resp>(F, PhantomData<fn() -> Resp>);

impl<Req, Resp, St, F, Fut> ServerStreamingService<Req> for Method<F, Resp>
where
    F: FnMut(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<St>, Status>> + Send + 'static,
    St: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    type Response = Resp;
    type ResponseStream = St;
    type Future = BoxFuture<Response<St>, Status>;

    fn call(&mut self, req: Request<Req>) -> Self::Future {
        Box::pin((self.0)(req))
    }
}

/// Serves `req` with `method`, encoded with the lean codec.
fn stream<B, Req, Resp, St, F, Fut>(
    req: http::Request<B>,
    method: F,
) -> BoxFuture<http::Response<Body>, Infallible>
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnMut(Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<St>, Status>> + Send + 'static,
    St: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = Grpc::new(LeanCodec::<Resp, Req>::default());
        Ok(grpc
            .server_streaming(Method(method, PhantomData), req)
            .await)
    })
}

/// `LeanRoutes` for a service: its generated server, and each streaming
/// method's path with the trait method that answers it.
macro_rules! lean_routes {
    ($svc:ty, $server:ident, { $($path:literal => $method:ident),+ $(,)? }) => {
        impl LeanRoutes for $svc {
            type Generated = $server<Self>;

            fn generated(svc: Arc<Self>) -> Self::Generated {
                $server::from_arc(svc)
            }

            fn route<B>(
                svc: &Arc<Self>,
                req: http::Request<B>,
            ) -> Result<BoxFuture<http::Response<Body>, Infallible>, Box<http::Request<B>>>
            where
                B: HttpBody + Send + 'static,
                B::Error: Into<StdError> + Send + 'static,
            {
                match req.uri().path() {
                    $($path => {
                        let svc = svc.clone();
                        Ok(stream(req, move |r| {
                            let svc = svc.clone();
                            async move { svc.$method(r).await }
                        }))
                    })+
                    _ => Err(Box::new(req)),
                }
            }
        }
    };
}

lean_routes!(crate::destination::DestinationService, DestinationServer, {
    "/io.linkerd.proxy.destination.Destination/Get" => get,
    "/io.linkerd.proxy.destination.Destination/GetProfile" => get_profile,
});
lean_routes!(crate::policy_service::PolicyService, InboundServerPoliciesServer, {
    "/io.linkerd.proxy.inbound.InboundServerPolicies/WatchPort" => watch_port,
});
lean_routes!(crate::outbound::OutboundService, OutboundPoliciesServer, {
    "/io.linkerd.proxy.outbound.OutboundPolicies/Watch" => watch,
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::DestinationService;

    fn request(path: &str) -> http::Request<Body> {
        http::Request::post(path)
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap()
    }

    /// The watches are answered leanly under the generated server's own
    /// paths; other methods go to the generated server.
    #[tokio::test]
    async fn watches_are_served_leanly_under_the_generated_paths() {
        let svc = Arc::new(DestinationService {
            index: tokio::sync::watch::channel(Arc::default()).1,
            issuer: tokio::sync::watch::channel(Default::default()).1,
            refusals: Arc::default(),
        });
        let name = <DestinationServer<DestinationService> as NamedService>::NAME;
        for m in ["Get", "GetProfile"] {
            let answer = DestinationService::route(&svc, request(&format!("/{name}/{m}")))
                .unwrap_or_else(|_| panic!("{m} is not served leanly"));
            // An empty request body: a gRPC refusal, not a transport error.
            let rsp = answer.await.unwrap();
            assert_eq!(rsp.status(), http::StatusCode::OK);
            assert!(rsp.headers().contains_key("grpc-status"), "{m}: {rsp:?}");
        }
        assert!(DestinationService::route(&svc, request(&format!("/{name}/Other"))).is_err());
    }
}

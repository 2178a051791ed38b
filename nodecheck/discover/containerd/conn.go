package containerd

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// maxMessageSize is what containerd's own client allows a message (a List of many containers
// with their OCI specs).
const maxMessageSize = 16 << 20

// namespaceHeader is the gRPC metadata key containerd reads a request's namespace from.
const namespaceHeader = "containerd-namespace"

// reconnectAfter caps the wait between attempts to reach a daemon that went away, as
// containerd's client does with its timeout, so a restarted containerd is found again within
// seconds (gRPC's default backoff grows to two minutes).
const reconnectAfter = 5 * time.Second

// Dial returns a connection to the containerd socket at address whose requests are in the
// namespace Kubernetes' containers live in. Like grpc.NewClient it does not wait for the daemon:
// a daemon that is down makes the requests fail.
func Dial(address string) (*grpc.ClientConn, error) {
	bo := backoff.DefaultConfig
	bo.MaxDelay = reconnectAfter
	// "unix:" takes an absolute or a relative socket path.
	conn, err := grpc.NewClient("unix:"+address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: reconnectAfter}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize), grpc.MaxCallSendMsgSize(maxMessageSize)),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(inNamespace(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(inNamespace(ctx), desc, cc, method, opts...)
		}))
	if err != nil {
		return nil, fmt.Errorf("connecting to containerd at %s: %w", address, err)
	}
	return conn, nil
}

func inNamespace(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, namespaceHeader, Namespace)
}

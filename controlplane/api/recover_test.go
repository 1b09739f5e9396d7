package api

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// lockedBuffer is a log destination safe for concurrent writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// panicky is a health service that panics when asked about the service
// "boom", in the unary Check and in the streaming Watch.
type panicky struct {
	healthpb.UnimplementedHealthServer
}

func (panicky) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if req.GetService() == "boom" {
		var m map[string]int
		m["x"]++ // a real runtime panic: assignment to a nil map
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (panicky) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	if req.GetService() == "boom" {
		panic("stream handler blew up")
	}
	return stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
}

// A panicking handler fails its call with Internal, is logged with its
// method, and the server goes on serving: unary and stream, over a real
// gRPC server on loopback.
func TestRecovererKeepsServing(t *testing.T) {
	logs := &lockedBuffer{}
	var panics atomic.Int32
	rec := &Recoverer{Log: slog.New(slog.NewTextHandler(logs, nil)), OnPanic: func(string) { panics.Add(1) }}
	// An interceptor after the recoverer that panics too (for service
	// "interceptor"): recovery covers the chain after it.
	after := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*healthpb.HealthCheckRequest); ok && r.GetService() == "interceptor" {
			panic(errors.New("interceptor blew up"))
		}
		return h(ctx, req)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(rec.Unary, after), grpc.ChainStreamInterceptor(rec.Stream))
	healthpb.RegisterHealthServer(srv, panicky{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	c := healthpb.NewHealthClient(conn)
	ctx := context.Background()

	for _, svc := range []string{"boom", "interceptor"} {
		_, err = c.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		require.Equal(t, codes.Internal, status.Code(err), "%s: %v", svc, err)
		require.Contains(t, status.Convert(err).Message(), healthpb.Health_Check_FullMethodName)
		require.NotContains(t, status.Convert(err).Message(), "nil map", "the panic's text stays in the log")
	}

	w, err := c.Watch(ctx, &healthpb.HealthCheckRequest{Service: "boom"})
	require.NoError(t, err)
	_, err = w.Recv()
	require.Equal(t, codes.Internal, status.Code(err), "%v", err)

	// Still serving, both kinds.
	resp, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "fine"})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
	w, err = c.Watch(ctx, &healthpb.HealthCheckRequest{Service: "fine"})
	require.NoError(t, err)
	_, err = w.Recv()
	require.NoError(t, err)

	require.EqualValues(t, 3, panics.Load())
	log := logs.String()
	require.Contains(t, log, "method="+healthpb.Health_Check_FullMethodName)
	require.Contains(t, log, "method="+healthpb.Health_Watch_FullMethodName)
	require.Contains(t, log, "assignment to entry in nil map")
	require.Contains(t, log, "stream handler blew up")
	require.Contains(t, log, "interceptor blew up")
	require.Contains(t, log, "stack=", "the stack is logged")
}

// recoverGo turns a panic on a handler's own goroutine into an error.
func TestRecoverGo(t *testing.T) {
	logs := &lockedBuffer{}
	errc := make(chan error, 1)
	recoverGo(slog.New(slog.NewTextHandler(logs, nil)), "/x/Y", errc, func() { panic("reader blew up") })
	err := <-errc
	require.Equal(t, codes.Internal, status.Code(err))
	require.Contains(t, logs.String(), "reader blew up")
	require.Contains(t, logs.String(), "method=/x/Y")

	recoverGo(nil, "/x/Y", errc, func() { errc <- errors.New("plain") })
	require.EqualError(t, <-errc, "plain")
}

// A nil Recoverer still recovers (to slog.Default).
func TestNilRecoverer(t *testing.T) {
	var rec *Recoverer
	_, err := rec.Unary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"},
		func(context.Context, any) (any, error) { panic("x") })
	require.Equal(t, codes.Internal, status.Code(err))
}

package stream

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// hugeCP answers Hello with a check assignment of the size asked for in
// Hello.version ("small" or "huge").
type hugeCP struct {
	agentv1.UnimplementedAgentServiceServer
}

func (hugeCP) Connect(stream agentv1.AgentService_ConnectServer) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	n := 1 << 10
	if m.GetHello().GetVersion() == "huge" {
		n = MaxRecvMsgSize + 1
	}
	spec := &agentv1.CheckSpec{Id: strings.Repeat("x", n)}
	return stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Checks{Checks: &agentv1.CheckAssignment{Checks: []*agentv1.CheckSpec{spec}}}})
}

// The agent's connection refuses messages over its limits both ways, and
// its batches always fit under the send limit.
func TestDialOptionsLimitMessageSizes(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	// The server itself accepts and sends anything: the limits are the
	// agent's.
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	agentv1.RegisterAgentServiceServer(srv, hugeCP{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), append(DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	c := agentv1.NewAgentServiceClient(conn)

	connect := func(version string) (*agentv1.ConnectResponse, error) {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		s, err := c.Connect(ctx)
		require.NoError(t, err)
		if err := s.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Version: version}}}); err != nil {
			return nil, err
		}
		return s.Recv()
	}
	m, err := connect("small")
	require.NoError(t, err)
	require.Len(t, m.GetChecks().GetChecks()[0].GetId(), 1<<10)

	_, err = connect("huge")
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)

	_, err = connect(strings.Repeat("v", MaxSendMsgSize))
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)

	require.Less(t, Config{}.withDefaults().BatchMaxBytes, MaxSendMsgSize)
	require.Less(t, Config{BatchMaxBytes: 1 << 30}.withDefaults().BatchMaxBytes, MaxSendMsgSize)
}

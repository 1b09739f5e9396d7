package stream

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// fakeCP is an in-process control plane: it records every result (deduping
// by seq, like the real one), acks batches (or holds the acks), and can
// refuse, drop or stay silent on demand.
type fakeCP struct {
	agentv1.UnimplementedAgentServiceServer
	addr string

	mu           sync.Mutex
	hbInterval   time.Duration
	refuse       bool // answer Connect with Unavailable
	noWelcome    bool // never answer Hello
	holdAcks     bool // keep acks until releaseAcks
	seen         map[uint64]int
	ackedThrough uint64 // what Welcome reports: acked and durable
	batches      int
	maxBatchLen  int
	heartbeats   int
	attempts     int
	sessions     int
	closedByPeer int // streams the agent half-closed (CloseSend)
	hellos       []*agentv1.Hello
	cur          *fakeSession
	holdTaskAcks bool                  // receive task updates without acking them
	taskUpdates  []*agentv1.TaskUpdate // every task update received, in order
}

type fakeSession struct {
	out  chan *agentv1.ConnectResponse
	drop chan struct{}
	held []*agentv1.BatchAck
}

func newFakeCP(t *testing.T) *fakeCP {
	t.Helper()
	f := &fakeCP{seen: map[uint64]int{}, hbInterval: time.Hour}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f.addr = lis.Addr().String()
	srv := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return f
}

func (f *fakeCP) dial(ctx context.Context) (*grpc.ClientConn, error) {
	return grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func (f *fakeCP) Connect(stream agentv1.AgentService_ConnectServer) error {
	f.mu.Lock()
	f.attempts++
	refuse := f.refuse
	f.mu.Unlock()
	if refuse {
		return status.Error(codes.Unavailable, "refused by test")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "first message must be Hello")
	}
	sess := &fakeSession{out: make(chan *agentv1.ConnectResponse, 64), drop: make(chan struct{})}
	f.mu.Lock()
	f.hellos = append(f.hellos, hello)
	if f.noWelcome {
		f.mu.Unlock()
		<-stream.Context().Done()
		return nil
	}
	f.sessions++
	f.cur = sess
	welcome := &agentv1.Welcome{
		AgentId:             "agent-1",
		Name:                "web-1",
		HeartbeatInterval:   durationpb.New(f.hbInterval),
		HeartbeatTtl:        durationpb.New(3 * f.hbInterval),
		ServerTime:          timestamppb.Now(),
		ResultsAckedThrough: f.ackedThrough,
	}
	f.mu.Unlock()
	if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}

	in := make(chan *agentv1.ConnectRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case in <- m:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	for {
		select {
		case m := <-in:
			for _, r := range f.handle(sess, m) {
				if err := stream.Send(r); err != nil {
					return err
				}
			}
		case r := <-sess.out:
			if err := stream.Send(r); err != nil {
				return err
			}
		case <-sess.drop:
			return status.Error(codes.Unavailable, "dropped by test")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				f.mu.Lock()
				f.closedByPeer++
				f.mu.Unlock()
				return nil
			}
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

func (f *fakeCP) handle(sess *fakeSession, m *agentv1.ConnectRequest) []*agentv1.ConnectResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch m := m.GetMsg().(type) {
	case *agentv1.ConnectRequest_Results:
		f.batches++
		f.maxBatchLen = max(f.maxBatchLen, len(m.Results.GetResults()))
		var stored uint32
		var last uint64
		for _, r := range m.Results.GetResults() {
			if f.seen[r.GetSeq()] == 0 {
				stored++
			}
			f.seen[r.GetSeq()]++
			last = r.GetSeq()
		}
		ack := &agentv1.BatchAck{BatchId: m.Results.GetBatchId(), AckedThrough: last, Stored: stored}
		if f.holdAcks {
			sess.held = append(sess.held, ack)
			return nil
		}
		f.ackedThrough = max(f.ackedThrough, last)
		return []*agentv1.ConnectResponse{{Msg: &agentv1.ConnectResponse_Ack{Ack: ack}}}
	case *agentv1.ConnectRequest_TaskUpdate:
		f.taskUpdates = append(f.taskUpdates, m.TaskUpdate)
		if f.holdTaskAcks {
			return nil
		}
		return []*agentv1.ConnectResponse{{Msg: &agentv1.ConnectResponse_TaskAck{TaskAck: &agentv1.TaskUpdateAck{
			TaskId: m.TaskUpdate.GetTaskId(), State: m.TaskUpdate.GetState(),
		}}}}
	case *agentv1.ConnectRequest_Heartbeat:
		f.heartbeats++
		return []*agentv1.ConnectResponse{{Msg: &agentv1.ConnectResponse_HeartbeatAck{HeartbeatAck: &agentv1.HeartbeatAck{ServerTime: timestamppb.Now()}}}}
	}
	return nil
}

// send queues a message to the agent on the current session.
func (f *fakeCP) send(t *testing.T, r *agentv1.ConnectResponse) {
	f.mu.Lock()
	sess := f.cur
	f.mu.Unlock()
	require.NotNil(t, sess, "no session")
	sess.out <- r
}

// drop ends the current session with Unavailable.
func (f *fakeCP) drop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur != nil {
		close(f.cur.drop)
		f.cur = nil
	}
}

// releaseAcks stops holding acks and sends the held ones.
func (f *fakeCP) releaseAcks() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holdAcks = false
	if f.cur == nil {
		return
	}
	for _, a := range f.cur.held {
		f.ackedThrough = max(f.ackedThrough, a.GetAckedThrough())
		f.cur.out <- &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Ack{Ack: a}}
	}
	f.cur.held = nil
}

func (f *fakeCP) set(fn func(f *fakeCP)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeCP) get(fn func(f *fakeCP) int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fn(f)
}

// seenAll reports whether every seq in 1..n arrived.
func (f *fakeCP) seenAll(n uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := uint64(1); s <= n; s++ {
		if f.seen[s] == 0 {
			return false
		}
	}
	return true
}

func (f *fakeCP) duplicates() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := 0
	for _, n := range f.seen {
		d += n - 1
	}
	return d
}

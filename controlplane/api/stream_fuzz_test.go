package api

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/ingest"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/controlplane/store/bolt"
	"tend.dev/tend/internal/pki"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// fuzzStream is an agent's side of Connect as the handler sees it: the
// messages of one fuzz input, then EOF. What the handler sends is dropped.
type fuzzStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs []*agentv1.ConnectRequest
}

func (s *fuzzStream) Context() context.Context { return s.ctx }

func (s *fuzzStream) Recv() (*agentv1.ConnectRequest, error) {
	if len(s.msgs) == 0 {
		return nil, io.EOF
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}

func (s *fuzzStream) Send(*agentv1.ConnectResponse) error { return nil }

// frames encodes messages as the fuzz inputs carry them: each one's
// length (uvarint), then its bytes.
func frames(msgs ...[]byte) []byte {
	var out []byte
	for _, m := range msgs {
		out = binary.AppendUvarint(out, uint64(len(m)))
		out = append(out, m...)
	}
	return out
}

// unframe splits a fuzz input into messages (a frame that does not decode
// is dropped, as the transport would refuse it).
func unframe(data []byte, max int) []*agentv1.ConnectRequest {
	var out []*agentv1.ConnectRequest
	for len(data) > 0 && len(out) < max {
		n, k := binary.Uvarint(data)
		if k <= 0 || n > uint64(len(data)-k) {
			n, k = uint64(len(data)), 0
		}
		var m agentv1.ConnectRequest
		if proto.Unmarshal(data[k:k+int(n)], &m) == nil {
			out = append(out, &m)
		}
		data = data[k+int(n):]
	}
	return out
}

// FuzzStreamHandler drives the real AgentService.Connect handler (with a
// real store, fleet registry and ingest) with arbitrary message sequences
// from an authenticated agent: it must never panic or hang, whatever the
// agent sends (the handler's own goroutines are not covered by the
// recovery interceptor, so a panic here would take the control plane
// down).
//
//	go test -run '^$' -fuzz FuzzStreamHandler ./controlplane/api/
func FuzzStreamHandler(f *testing.F) {
	quiet := slog.New(slog.DiscardHandler)
	st, err := bolt.Open(filepath.Join(f.TempDir(), "tend.db"), bolt.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	fl, err := fleet.New(fleet.Config{Store: st, Log: quiet})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(fl.Stop)
	const agentID = "agt-fuzz"
	fl.Add(store.Agent{ID: agentID, Name: "fuzz", EnrolledAt: time.Now()})
	ing := ingest.New(st, ingest.Options{}, quiet)
	ing.Start()
	f.Cleanup(ing.Stop)
	ps, err := NewPolicySet(st, quiet)
	if err != nil {
		f.Fatal(err)
	}
	h := &Stream{Store: st, Fleet: fl, Ingest: ing, Policies: ps, Log: quiet, Now: time.Now}
	ctx := context.WithValue(context.Background(), identityKey{}, pki.Identity{ID: agentID, Role: pki.RoleAgent})

	m := func(msg *agentv1.ConnectRequest) []byte {
		b, err := proto.Marshal(msg)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	hello := m(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{
		Version: "1.0", Labels: map[string]string{"role": "web"}, Facts: map[string]string{"os": "linux"},
		LocalChecks: []*agentv1.CheckSpec{{Id: "local/x", Interval: durationpb.New(time.Second),
			Check: &agentv1.CheckSpec_Command{Command: &agentv1.CommandCheck{Argv: []string{"/bin/true"}}}}},
	}}})
	results := func(seqs ...uint64) []byte {
		var rs []*agentv1.CheckResult
		for _, s := range seqs {
			rs = append(rs, &agentv1.CheckResult{Seq: s, CheckId: "local/x", Status: agentv1.CheckStatus_CHECK_STATUS_CRITICAL,
				Output: "out", Metrics: map[string]float64{"m": 1}, StartedAt: timestamppb.Now(), Duration: durationpb.New(time.Millisecond)})
		}
		return m(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Results{Results: &agentv1.ResultBatch{BatchId: seqs[0], Results: rs}}})
	}
	heartbeat := m(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{OutboxDroppedTotal: 3}}})
	update := m(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_TaskUpdate{TaskUpdate: &agentv1.TaskUpdate{
		TaskId: "task-1", Seq: 1, State: agentv1.TaskState_TASK_STATE_SUCCEEDED, Output: "ok", Metrics: map[string]float64{"x": 1}}}})
	f.Add(frames(hello, results(1, 2), heartbeat, update, results(3)))
	f.Add(frames(hello, results(5, 4)))
	f.Add(frames(hello, hello))
	f.Add(frames(heartbeat))
	f.Add(frames(hello, m(&agentv1.ConnectRequest{})))
	f.Add(frames(hello, m(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_TaskUpdate{TaskUpdate: &agentv1.TaskUpdate{
		TaskId: strings.Repeat("t", 200), Metrics: map[string]float64{"": math.NaN()}}}})))
	f.Add(frames(hello, m(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Results{Results: &agentv1.ResultBatch{
		Results: []*agentv1.CheckResult{{Seq: math.MaxUint64, CheckId: "\x00", Status: 99, StartedAt: &timestamppb.Timestamp{Seconds: math.MinInt64}}}}}})))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})

	f.Fuzz(func(t *testing.T, data []byte) {
		s := &fuzzStream{ctx: ctx, msgs: unframe(data, 64)}
		done := make(chan error, 1)
		go func() { done <- h.Connect(s) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("Connect did not return after the agent's EOF")
		}
	})
}

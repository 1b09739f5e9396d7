package stream

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"io"
	"math"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/agent/checks"
	"tend.dev/tend/agent/state"
	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// fuzzStream is the control plane's side of the stream as the agent's
// receiver sees it: the messages of one fuzz input, then EOF.
type fuzzStream struct {
	grpc.ClientStream
	msgs []*agentv1.ConnectResponse
}

func (s *fuzzStream) Recv() (*agentv1.ConnectResponse, error) {
	if len(s.msgs) == 0 {
		return nil, io.EOF
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}

func (s *fuzzStream) Send(*agentv1.ConnectRequest) error { return nil }

func (s *fuzzStream) Context() context.Context { return context.Background() }

// FuzzReceive drives the agent's receiver with arbitrary messages from the
// control plane (a compromised one, or a man in the middle that got past
// TLS): acknowledgements against the real outbox, check assignments
// through every check constructor, task deliveries through the envelope
// verifier. Nothing may panic, and no task may verify without the pinned
// key's signature.
//
//	go test -run '^$' -fuzz FuzzReceive ./agent/stream/
func FuzzReceive(f *testing.F) {
	db, err := state.Open(filepath.Join(f.TempDir(), "agent.db"), state.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	for i := range 5 {
		_ = db.Append(&agentv1.CheckResult{CheckId: "local/x", Status: agentv1.CheckStatus_CHECK_STATUS_OK, Output: string(rune('a' + i))})
	}
	_ = db.PutTaskUpdate(&agentv1.TaskUpdate{TaskId: "task-1", Seq: 1, State: agentv1.TaskState_TASK_STATE_SUCCEEDED, At: timestamppb.Now()})

	seed := make([]byte, ed25519.SeedSize)
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	key := &pki.SigningKey{ID: pki.KeyID(pub), Priv: priv, Pub: pub}
	keys := map[string]ed25519.PublicKey{key.ID: pub}

	c := New(Config{
		DB: db,
		OnAssignment: func(a *agentv1.CheckAssignment) {
			for _, spec := range a.GetChecks() {
				if ch, err := checks.New(spec); err == nil && ch == nil {
					panic("checks.New returned neither a checker nor an error")
				}
			}
		},
		OnTask: func(d *agentv1.TaskDelivery) {
			task.UntrustedID(d.GetEnvelope())
			tk, err := task.OpenTask(d.GetEnvelope(), keys)
			if err == nil && tk.GetTaskId() != "genuine" {
				panic("a task verified that the pinned key never signed: " + tk.GetTaskId())
			}
			_ = task.Check(tk, "agent-1", time.Now(), 0, time.Minute)
		},
	})

	m := func(msg *agentv1.ConnectResponse) []byte {
		b, err := proto.Marshal(msg)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	frame := func(msgs ...[]byte) []byte {
		var out []byte
		for _, b := range msgs {
			out = binary.AppendUvarint(out, uint64(len(b)))
			out = append(out, b...)
		}
		return out
	}
	env, err := task.Seal(key, &taskv1.Task{TaskId: "genuine", AgentId: "agent-1", Action: "exec.run", Seq: 1,
		ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)), Timeout: durationpb.New(time.Second)})
	if err != nil {
		f.Fatal(err)
	}
	spec := func(s *agentv1.CheckSpec) *agentv1.CheckSpec {
		s.Id, s.Interval, s.Timeout = "p", durationpb.New(time.Second), durationpb.New(time.Second)
		return s
	}
	assignment := m(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Checks{Checks: &agentv1.CheckAssignment{Generation: 2, Checks: []*agentv1.CheckSpec{
		spec(&agentv1.CheckSpec{Check: &agentv1.CheckSpec_Process{Process: &agentv1.ProcessCheck{Name: "nginx"}}}),
		spec(&agentv1.CheckSpec{Check: &agentv1.CheckSpec_Process{Process: &agentv1.ProcessCheck{Pidfile: "relative\x00"}}}),
		spec(&agentv1.CheckSpec{Check: &agentv1.CheckSpec_Disk{Disk: &agentv1.DiskCheck{Path: "/", MaxUsedPercent: math.NaN()}}}),
		spec(&agentv1.CheckSpec{Check: &agentv1.CheckSpec_Tcp{Tcp: &agentv1.TcpCheck{Address: "[::1"}}}),
		spec(&agentv1.CheckSpec{Check: &agentv1.CheckSpec_Http{Http: &agentv1.HttpCheck{Url: "http://%zz", ExpectStatus: -1}}}),
		spec(&agentv1.CheckSpec{Check: &agentv1.CheckSpec_Command{Command: &agentv1.CommandCheck{Argv: []string{"/bin/sh", "-c", "touch /tmp/pwned"}}}}),
		spec(&agentv1.CheckSpec{Check: &agentv1.CheckSpec_Command{}}),
		spec(&agentv1.CheckSpec{Check: &agentv1.CheckSpec_Service{Service: &agentv1.ServiceCheck{Name: "--no-block"}}}),
		{},
	}}}})
	f.Add(frame(
		m(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Ack{Ack: &agentv1.BatchAck{BatchId: 1, AckedThrough: 2, Stored: 2}}}),
		assignment,
		m(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Task{Task: &agentv1.TaskDelivery{Envelope: env}}}),
		m(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_TaskAck{TaskAck: &agentv1.TaskUpdateAck{TaskId: "task-1", State: agentv1.TaskState_TASK_STATE_SUCCEEDED}}}),
		m(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_HeartbeatAck{HeartbeatAck: &agentv1.HeartbeatAck{ServerTime: timestamppb.Now()}}}),
	))
	f.Add(frame(m(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Ack{Ack: &agentv1.BatchAck{BatchId: math.MaxUint64, AckedThrough: math.MaxUint64}}})))
	f.Add(frame(m(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Task{Task: &agentv1.TaskDelivery{Envelope: env[:len(env)/2]}}})))
	f.Add(frame(m(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{HeartbeatInterval: &durationpb.Duration{Seconds: -1}}}})))
	f.Add(frame(m(&agentv1.ConnectResponse{}), m(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_TaskAck{TaskAck: &agentv1.TaskUpdateAck{TaskId: string(make([]byte, 300))}}})))
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})

	f.Fuzz(func(t *testing.T, data []byte) {
		var msgs []*agentv1.ConnectResponse
		for len(data) > 0 && len(msgs) < 64 {
			n, k := binary.Uvarint(data)
			if k <= 0 || n > uint64(len(data)-k) {
				n, k = uint64(len(data)), 0
			}
			var msg agentv1.ConnectResponse
			if proto.Unmarshal(data[k:k+int(n)], &msg) == nil {
				msgs = append(msgs, &msg)
			}
			data = data[k+int(n):]
		}
		win := &window{wake: make(chan struct{}, 1)}
		win.add(sentBatch{id: 1, first: 1, last: 2, n: 2, sentAt: time.Now()})
		win.add(sentBatch{id: 2, first: 3, last: 5, n: 3, sentAt: time.Now()})
		_ = c.receive(&fuzzStream{msgs: msgs}, win)
	})
}

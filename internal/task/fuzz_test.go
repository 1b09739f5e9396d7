package task

import (
	"crypto/ed25519"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/internal/pki"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// fuzzKey is fixed so that crashers in testdata/fuzz stay meaningful.
func fuzzKey() *pki.SigningKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	return &pki.SigningKey{ID: pki.KeyID(pub), Priv: priv, Pub: pub}
}

// FuzzOpenTask feeds arbitrary bytes to the verifier, and flips bytes of
// genuine envelopes. The verifier must never panic, must accept nothing but
// the genuine envelopes, and must refuse every genuine envelope with any
// byte changed.
func FuzzOpenTask(f *testing.F) {
	k := fuzzKey()
	keys := map[string]ed25519.PublicKey{k.ID: k.Pub}
	var genuine [][]byte
	add := func(tk *taskv1.Task) {
		env, err := Seal(k, tk)
		if err != nil {
			f.Fatal(err)
		}
		genuine = append(genuine, env)
	}
	add(validTask())
	minimal := &taskv1.Task{TaskId: "t", AgentId: "a", Action: "exec.run", Seq: 1,
		ExpiresAt: timestamppb.New(t0), Timeout: durationpb.New(time.Second)}
	add(minimal)
	other, _ := SealPayload(k, "tend.task.v1.Other", []byte("x"))

	for _, g := range genuine {
		f.Add(g, uint16(0), byte(1))
		f.Add(g, uint16(len(g)/2), byte(0x80))
		f.Add(g, uint16(len(g)-1), byte(0xff))
	}
	f.Add(other, uint16(3), byte(4))
	f.Add([]byte{}, uint16(0), byte(0))
	f.Add([]byte("\x0a\x11tend.task.v1.Task\x12\x00"), uint16(1), byte(2))

	f.Fuzz(func(t *testing.T, data []byte, pos uint16, mask byte) {
		// Arbitrary bytes: no panic, and nothing but a genuine envelope
		// opens.
		tk, err := OpenTask(data, keys)
		if err == nil {
			ok := false
			for _, g := range genuine {
				ok = ok || string(g) == string(data)
			}
			if !ok {
				t.Fatalf("accepted an envelope nobody sealed: %x -> %v", data, tk)
			}
		} else if CodeOf(err) == "" {
			t.Fatalf("error without a code: %v", err)
		}
		_ = Check(tk, "agent-1", t0, 0, time.Minute) // nil-safe, no panic
		UntrustedID(data)

		// A genuine envelope with one byte changed never opens.
		if mask == 0 {
			return
		}
		for _, g := range genuine {
			b := append([]byte(nil), g...)
			b[int(pos)%len(b)] ^= mask
			if tk, err := OpenTask(b, keys); err == nil {
				t.Fatalf("flipped byte %d ^ %#x accepted: %v", int(pos)%len(b), mask, tk)
			}
		}
	})
}

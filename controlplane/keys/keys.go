// Package keys keeps the control plane's task-signing keys and rotates them
// with an overlap, so that no agent ever sees a task signed with a key it
// does not hold yet:
//
//  1. Rotate creates a key in state "published": agents receive it (over
//     their stream, and in every certificate renewal) and accept it, but
//     the active key keeps signing.
//  2. Activate makes it the signing key once every agent reported holding
//     it (or with force); the previous key stays published, so tasks it
//     signed that are still in flight remain valid.
//  3. Retire stops publishing an old key: agents drop it and refuse tasks
//     signed with it from then on.
//
// The ring is one JSON file in the data dir, mode 0600, written atomically;
// private keys are never logged or returned by the API.
package keys

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"tend.dev/tend/internal/pki"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// RingFile is the key ring's file in the data dir.
const RingFile = "task-signing-keys.json"

// Key states.
const (
	StateActive    = "active"
	StatePublished = "published"
	StateRetired   = "retired"
)

// MaxPublished is the most keys published at once (agents accept at most
// 16 in a set; rotation needs two).
const MaxPublished = 8

// Errors callers map to API codes.
var (
	ErrNotFound = errors.New("no such signing key")
	ErrState    = errors.New("signing key in the wrong state")
)

// Info describes one key without its private part.
type Info struct {
	ID        string
	State     string
	CreatedAt time.Time
	// DeactivatedAt is when the key last stopped being the active key.
	DeactivatedAt time.Time
}

type fileKey struct {
	ID            string    `json:"id"`
	State         string    `json:"state"`
	CreatedAt     time.Time `json:"createdAt"`
	DeactivatedAt time.Time `json:"deactivatedAt,omitzero"`
	// PEM is the PKCS#8 private key.
	PEM string `json:"pem"`
}

type entry struct {
	info Info
	key  *pki.SigningKey
}

// Ring is the set of signing keys. It is safe for concurrent use.
type Ring struct {
	path string
	now  func() time.Time

	mu       sync.RWMutex
	keys     []entry // oldest first
	holders  map[string][]string
	onChange []func()
}

// Open loads the ring from dataDir, creating it on first start. A data dir
// from before key rotation (one task-signing.key) becomes a ring with that
// key active, so the agents' pinned key stays valid.
func Open(dataDir string, now func() time.Time) (*Ring, error) {
	if now == nil {
		now = time.Now
	}
	r := &Ring{path: filepath.Join(dataDir, RingFile), now: now, holders: map[string][]string{}}
	b, err := os.ReadFile(r.path)
	switch {
	case err == nil:
		var fk []fileKey
		if err := json.Unmarshal(b, &fk); err != nil {
			return nil, fmt.Errorf("signing key ring %s: %w", r.path, err)
		}
		for i, k := range fk {
			sk, err := parseKey(k.PEM)
			if err != nil {
				return nil, fmt.Errorf("signing key ring %s: key %d (%s): %w", r.path, i, k.ID, err)
			}
			if sk.ID != k.ID {
				return nil, fmt.Errorf("signing key ring %s: key %d says id %s but its public key has id %s", r.path, i, k.ID, sk.ID)
			}
			if k.State != StateActive && k.State != StatePublished && k.State != StateRetired {
				return nil, fmt.Errorf("signing key ring %s: key %s: unknown state %q", r.path, k.ID, k.State)
			}
			r.keys = append(r.keys, entry{info: Info{ID: k.ID, State: k.State, CreatedAt: k.CreatedAt, DeactivatedAt: k.DeactivatedAt}, key: sk})
		}
		if n := r.countLocked(StateActive); n != 1 {
			return nil, fmt.Errorf("signing key ring %s: %d active keys, want exactly 1", r.path, n)
		}
		return r, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("signing key ring: %w", err)
	}
	// First start, or a data dir with the single pre-rotation key.
	sk, _, err := pki.LoadOrCreateSigningKey(filepath.Join(dataDir, pki.SigningKeyFile))
	if err != nil {
		return nil, err
	}
	r.keys = []entry{{info: Info{ID: sk.ID, State: StateActive, CreatedAt: now()}, key: sk}}
	if err := r.saveLocked(); err != nil {
		return nil, err
	}
	return r, nil
}

func parseKey(p string) (*pki.SigningKey, error) {
	block, _ := pem.Decode([]byte(p))
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("want an Ed25519 key, got %T", k)
	}
	pub := priv.Public().(ed25519.PublicKey)
	return &pki.SigningKey{ID: pki.KeyID(pub), Priv: priv, Pub: pub}, nil
}

func (r *Ring) countLocked(state string) int {
	n := 0
	for _, e := range r.keys {
		if e.info.State == state {
			n++
		}
	}
	return n
}

func (r *Ring) saveLocked() error {
	fk := make([]fileKey, 0, len(r.keys))
	for _, e := range r.keys {
		p, err := pki.EncodeKeyPEM(e.key.Priv)
		if err != nil {
			return err
		}
		fk = append(fk, fileKey{ID: e.info.ID, State: e.info.State, CreatedAt: e.info.CreatedAt, DeactivatedAt: e.info.DeactivatedAt, PEM: string(p)})
	}
	b, err := json.MarshalIndent(fk, "", "  ")
	if err != nil {
		return err
	}
	return pki.WriteFileAtomic(r.path, b, 0o600)
}

// Active is the key that signs tasks now.
func (r *Ring) Active() *pki.SigningKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, e := range r.keys {
		if e.info.State == StateActive {
			return e.key
		}
	}
	return nil // unreachable: Open and every change keep one active key
}

// Published is the set agents must accept: the active key and the
// published ones, never retired ones.
func (r *Ring) Published() []*agentv1.SigningKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*agentv1.SigningKey
	for _, e := range r.keys {
		if e.info.State != StateRetired {
			out = append(out, &agentv1.SigningKey{KeyId: e.info.ID, PublicKey: slices.Clone(e.key.Pub)})
		}
	}
	return out
}

// AllPublic maps every key id to its public key, retired keys included
// (for checking what a key signed in the past, never for new orders).
func (r *Ring) AllPublic() map[string]ed25519.PublicKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make(map[string]ed25519.PublicKey, len(r.keys))
	for _, e := range r.keys {
		out[e.info.ID] = slices.Clone(e.key.Pub)
	}
	return out
}

// List describes every key, oldest first.
func (r *Ring) List() []Info {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Info, len(r.keys))
	for i, e := range r.keys {
		out[i] = e.info
	}
	return out
}

// OnChange registers fn to be called (outside the lock) after every change
// of the published set.
func (r *Ring) OnChange(fn func()) {
	r.mu.Lock()
	r.onChange = append(r.onChange, fn)
	r.mu.Unlock()
}

func (r *Ring) changed() {
	r.mu.RLock()
	fns := slices.Clone(r.onChange)
	r.mu.RUnlock()
	for _, fn := range fns {
		fn()
	}
}

// Rotate creates a new key in state published.
func (r *Ring) Rotate() (Info, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Info{}, err
	}
	sk := &pki.SigningKey{ID: pki.KeyID(pub), Priv: priv, Pub: pub}
	r.mu.Lock()
	if n := len(r.keys) - r.countLocked(StateRetired); n >= MaxPublished {
		r.mu.Unlock()
		return Info{}, fmt.Errorf("%d keys are published already (at most %d): activate one and retire the old ones first: %w", n, MaxPublished, ErrState)
	}
	e := entry{info: Info{ID: sk.ID, State: StatePublished, CreatedAt: r.now()}, key: sk}
	r.keys = append(r.keys, e)
	if err := r.saveLocked(); err != nil {
		r.keys = r.keys[:len(r.keys)-1]
		r.mu.Unlock()
		return Info{}, fmt.Errorf("save signing key ring: %w", err)
	}
	r.mu.Unlock()
	r.changed()
	return e.info, nil
}

func (r *Ring) indexLocked(id string) (int, error) {
	for i, e := range r.keys {
		if e.info.ID == id {
			return i, nil
		}
	}
	return -1, fmt.Errorf("signing key %q: %w", id, ErrNotFound)
}

// Activate makes a published key the signing key; the previous active key
// becomes published. missing is how many agents have not reported holding
// it: Activate refuses while it is above zero unless force.
func (r *Ring) Activate(id string, missing int, force bool) (Info, error) {
	r.mu.Lock()
	i, err := r.indexLocked(id)
	if err != nil {
		r.mu.Unlock()
		return Info{}, err
	}
	switch r.keys[i].info.State {
	case StateActive:
		info := r.keys[i].info
		r.mu.Unlock()
		return info, nil
	case StateRetired:
		r.mu.Unlock()
		return Info{}, fmt.Errorf("signing key %s is retired and cannot sign again: rotate to a new key: %w", id, ErrState)
	}
	if missing > 0 && !force {
		r.mu.Unlock()
		return Info{}, fmt.Errorf("signing key %s: %s not reported holding it yet (their tasks would be rejected); wait until `tendctl get keys` shows every agent, or use --force: %w", id, agents(missing), ErrState)
	}
	old := slices.Clone(r.keys)
	now := r.now()
	for j := range r.keys {
		if r.keys[j].info.State == StateActive {
			r.keys[j].info.State = StatePublished
			r.keys[j].info.DeactivatedAt = now
		}
	}
	r.keys[i].info.State = StateActive
	if err := r.saveLocked(); err != nil {
		r.keys = old
		r.mu.Unlock()
		return Info{}, fmt.Errorf("save signing key ring: %w", err)
	}
	info := r.keys[i].info
	r.mu.Unlock()
	r.changed()
	return info, nil
}

// Retire stops publishing a key that does not sign. A key that stopped
// signing less than inFlight ago is refused unless force: tasks it signed
// may still be on their way.
func (r *Ring) Retire(id string, inFlight time.Duration, force bool) (Info, error) {
	r.mu.Lock()
	i, err := r.indexLocked(id)
	if err != nil {
		r.mu.Unlock()
		return Info{}, err
	}
	switch r.keys[i].info.State {
	case StateActive:
		r.mu.Unlock()
		return Info{}, fmt.Errorf("signing key %s is the active key: activate another one first: %w", id, ErrState)
	case StateRetired:
		info := r.keys[i].info
		r.mu.Unlock()
		return info, nil
	}
	if d := r.keys[i].info.DeactivatedAt; !force && !d.IsZero() {
		if left := d.Add(inFlight).Sub(r.now()); left > 0 {
			r.mu.Unlock()
			return Info{}, fmt.Errorf("signing key %s stopped signing %s ago: tasks it signed may still be in flight for %s more (or use --force): %w",
				id, r.now().Sub(d).Round(time.Second), left.Round(time.Second), ErrState)
		}
	}
	r.keys[i].info.State = StateRetired
	if err := r.saveLocked(); err != nil {
		r.keys[i].info.State = StatePublished
		r.mu.Unlock()
		return Info{}, fmt.Errorf("save signing key ring: %w", err)
	}
	info := r.keys[i].info
	r.mu.Unlock()
	r.changed()
	return info, nil
}

func agents(n int) string {
	if n == 1 {
		return "1 agent has"
	}
	return fmt.Sprintf("%d agents have", n)
}

// NoteHolder records the key ids an agent reported holding (in memory: an
// agent reports them on every connect).
func (r *Ring) NoteHolder(agentID string, ids []string) {
	ids = slices.Clone(ids)
	sort.Strings(ids)
	r.mu.Lock()
	r.holders[agentID] = ids
	r.mu.Unlock()
}

// Holders counts, among agentIDs, those that reported holding key id.
func (r *Ring) Holders(id string, agentIDs []string) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n := 0
	for _, a := range agentIDs {
		if _, ok := slices.BinarySearch(r.holders[a], id); ok {
			n++
		}
	}
	return n
}

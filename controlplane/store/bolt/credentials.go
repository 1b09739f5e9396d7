package bolt

import (
	"encoding/json"
	"fmt"
	"slices"

	"tend.dev/tend/controlplane/store"
)

// PutCredential implements store.CredentialStore.
func (s *Store) PutCredential(c store.Credential) error {
	if err := validKeyPart("credential serial", c.Serial); err != nil {
		return fmt.Errorf("put credential: %w", err)
	}
	if err := validKeyPart("credential name", c.Name); err != nil {
		return fmt.Errorf("put credential %s: %w", c.Serial, err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return s.update(func(t txn) error {
		return t.bucket(bucketCredentials).Put([]byte(c.Serial), b)
	})
}

// ListCredentials implements store.CredentialStore: by issue time, then
// serial.
func (s *Store) ListCredentials() ([]store.Credential, error) {
	var out []store.Credential
	err := s.view(func(t txn) error {
		return t.bucket(bucketCredentials).ForEach(func(k, v []byte) error {
			var c store.Credential
			if err := json.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("credential %q: %w", k, err)
			}
			out = append(out, c)
			return nil
		})
	})
	slices.SortFunc(out, func(a, b store.Credential) int {
		if c := a.IssuedAt.Compare(b.IssuedAt); c != 0 {
			return c
		}
		if a.Serial < b.Serial {
			return -1
		}
		return 1
	})
	return out, err
}

package bolt

import (
	"errors"

	"tend.dev/tend/controlplane/store"
)

// Placeholder until the incidents/tasks buckets land (being written now).
var errTODO = errors.New("incidents and tasks: not implemented yet")

func (s *Store) CreateIncident(inc store.Incident) error       { return errTODO }
func (s *Store) GetIncident(id string) (store.Incident, error) { return store.Incident{}, errTODO }
func (s *Store) OpenIncident(agentID, policy string) (store.Incident, error) {
	return store.Incident{}, errTODO
}
func (s *Store) UpdateIncident(id string, fn func(*store.Incident) error) error {
	return errTODO
}
func (s *Store) ListIncidents(f store.IncidentFilter) ([]store.Incident, error) { return nil, errTODO }
func (s *Store) CreateTask(t store.Task, seal func(*store.Task) error) (store.Task, error) {
	return store.Task{}, errTODO
}
func (s *Store) GetTask(id string) (store.Task, error)                  { return store.Task{}, errTODO }
func (s *Store) UpdateTask(id string, fn func(*store.Task) error) error { return errTODO }
func (s *Store) ListTasks(f store.TaskFilter) ([]store.Task, error)     { return nil, errTODO }
func (s *Store) TaskSeq(agentID string) (uint64, error)                 { return 0, errTODO }

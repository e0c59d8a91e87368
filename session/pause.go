package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/session/snapshot"
	"github.com/codegw/codegw/store"
)

// Idle actions (IDLE_ACTION).
const (
	IdleDelete = "delete"
	IdlePause  = "pause"
)

// Snapshots reports whether sessions can be paused, resumed and
// checkpointed here (a snapshot store and a session store are set).
func (m *Manager) Snapshots() bool { return m.cfg.Snapshots != nil && m.cfg.Store != nil }

func errSnapshotsOff() error {
	return codegw.Errorf(codegw.EINVALID, "session snapshots are off on this server (set SNAPSHOT_DIR)")
}

// waitQueue waits until s has no execution running or queued.
func (s *Session) waitQueue(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.pending == 0 {
			s.mu.Unlock()
			return nil
		}
		if s.emptied == nil {
			s.emptied = make(chan struct{})
		}
		ch := s.emptied
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return codegw.WrapError(codegw.EBUSY, ctx.Err(), "session %q is still executing", s.id)
		}
	}
}

// snapshot stores a snapshot of s's state, after the running execution
// (if any) ends. Over MAX_SNAPSHOT_BYTES it is ETOOLARGE, over the key's
// total ELIMIT; s runs on either way.
func (s *Session) snapshot(ctx context.Context, kind string) (snapshot.Meta, error) {
	m := s.m
	if !m.Snapshots() {
		return snapshot.Meta{}, errSnapshotsOff()
	}
	s.kmu.Lock()
	defer s.kmu.Unlock()
	if err := s.k.Err(); err != nil {
		return snapshot.Meta{}, codegw.WrapError(codegw.EUNAVAILABLE, err, "session %q: its kernel is dead; its state cannot be saved", s.id)
	}
	start := time.Now()
	t, err := snapshot.Take(ctx, s.k, m.cfg.MaxSnapshotBytes)
	if err != nil {
		return snapshot.Meta{}, err
	}
	defer t.Close()
	s.mu.Lock()
	meta := snapshot.Meta{
		ID: snapshot.NewID(), Session: s.id, Owner: s.owner, Kind: kind, TakenAt: time.Now().UTC(),
		SessionCreated: s.created, Executions: s.executions, IdleTimeout: s.idle, Env: s.env, Seq: s.hub.lastSeq(),
		Variables: t.Variables, Skipped: t.Skipped,
	}
	s.mu.Unlock()
	var room int64 = -1
	if m.cfg.MaxSnapshotBytesPerKey > 0 {
		used, err := m.cfg.Snapshots.Usage(ctx, s.owner)
		if err != nil {
			return snapshot.Meta{}, err
		}
		if room = m.cfg.MaxSnapshotBytesPerKey - used; room <= 0 {
			return snapshot.Meta{}, keyFull(m.cfg.MaxSnapshotBytesPerKey)
		}
	}
	pr, pw := io.Pipe()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		defer codegw.Recover(ctx, "snapshot writer", func(err error) { pw.CloseWithError(err) })
		pw.CloseWithError(t.Write(pw))
	}()
	var r io.Reader = pr
	if room >= 0 {
		r = &roomReader{r: pr, room: room, limit: m.cfg.MaxSnapshotBytesPerKey}
	}
	meta, err = m.cfg.Snapshots.Put(ctx, meta, r)
	pr.CloseWithError(errors.New("snapshot store stopped reading"))
	<-wrote
	if err != nil {
		return snapshot.Meta{}, err
	}
	s.mu.Lock()
	s.checkpointed = meta.Executions
	s.mu.Unlock()
	m.prune(ctx, meta)
	m.log.Info("session snapshot", "session", s.id, "kind", kind, "snapshot", meta.ID, "bytes", meta.Bytes,
		"variables", len(meta.Variables), "skipped", len(meta.Skipped), "took", time.Since(start))
	return meta, nil
}

func keyFull(limit int64) error {
	return codegw.Errorf(codegw.ELIMIT, "this key's snapshots are over their limit of %d bytes (MAX_SNAPSHOT_BYTES_PER_KEY); delete paused sessions or checkpoints", limit)
}

// roomReader fails once more than room bytes were read.
type roomReader struct {
	r           io.Reader
	room, limit int64
}

func (r *roomReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if r.room -= int64(n); r.room < 0 {
		return n, keyFull(r.limit)
	}
	return n, err
}

// prune removes the session's snapshots that meta makes useless: the older
// pause and automatic ones (a client's checkpoints stay until the session
// is deleted).
func (m *Manager) prune(ctx context.Context, meta snapshot.Meta) {
	list, err := m.cfg.Snapshots.List(ctx, meta.Session)
	if err != nil {
		return
	}
	for _, old := range list {
		if old.ID != meta.ID && old.Kind != snapshot.KindCheckpoint && !old.TakenAt.After(meta.TakenAt) {
			m.cfg.Snapshots.Delete(ctx, old.Session, old.ID)
		}
	}
}

// Checkpoint stores a snapshot of owner's session without pausing it.
func (m *Manager) Checkpoint(ctx context.Context, id, owner string) (codegw.Snapshot, error) {
	s, err := m.Get(id, owner)
	if err != nil {
		return codegw.Snapshot{}, err
	}
	s.touch()
	meta, err := s.snapshot(ctx, snapshot.KindCheckpoint)
	if err != nil {
		return codegw.Snapshot{}, err
	}
	return meta.Public(), nil
}

// Pause snapshots owner's session and frees its kernel: the session stays
// listed as paused and its next use resumes it, here or on any instance.
// Executions already queued run first; new ones are refused meanwhile. If
// the snapshot fails the session runs on and the error says why.
func (m *Manager) Pause(ctx context.Context, id, owner string) (codegw.Snapshot, error) {
	s, err := m.Get(id, owner)
	if err != nil {
		return codegw.Snapshot{}, err
	}
	meta, err := m.pause(ctx, s, "paused by the client")
	if err != nil {
		return codegw.Snapshot{}, err
	}
	return meta.Public(), nil
}

func (m *Manager) pause(ctx context.Context, s *Session, why string) (snapshot.Meta, error) {
	if !m.Snapshots() {
		return snapshot.Meta{}, errSnapshotsOff()
	}
	s.mu.Lock()
	if s.closing || s.paused {
		s.mu.Unlock()
		return snapshot.Meta{}, codegw.Errorf(codegw.ECONFLICT, "session %q is already ending or pausing", s.id)
	}
	s.paused = true
	s.mu.Unlock()
	meta, err := func() (snapshot.Meta, error) {
		if err := s.waitQueue(ctx); err != nil {
			return snapshot.Meta{}, err
		}
		return s.snapshot(ctx, snapshot.KindPause)
	}()
	if err == nil {
		err = m.cfg.Store.ReassignSession(ctx, s.id, m.cfg.Instance, store.Paused)
		if codegw.ErrorCode(err) == codegw.ENOTFOUND { // the store lost the record: record it again
			rec := store.SessionRecord{ID: s.id, Owner: s.owner, Instance: store.Paused, CreatedAt: s.created}
			err = m.cfg.Store.CreateSession(ctx, rec, 0, 0)
		}
	}
	if err != nil {
		s.mu.Lock()
		s.paused = false
		s.mu.Unlock()
		return snapshot.Meta{}, err
	}
	m.end(s, why+"; the session is paused: its next use resumes it with its variables", endPaused)
	m.cfg.Metrics.SessionPaused()
	return meta, nil
}

// Paused describes owner's session id when it is paused (its record says
// so, or the instance holding it died and a snapshot of it exists): ok is
// false for any other session, which the caller serves as before.
func (m *Manager) Paused(ctx context.Context, id, owner string) (info codegw.SessionInfo, ok bool, err error) {
	if !m.Snapshots() || m.Local(id) {
		return codegw.SessionInfo{}, false, nil
	}
	rec, latest, ok, err := m.resumable(ctx, id, owner)
	if !ok || err != nil {
		return codegw.SessionInfo{}, false, err
	}
	return pausedInfo(rec, latest), true, nil
}

func pausedInfo(rec store.SessionRecord, latest snapshot.Meta) codegw.SessionInfo {
	return codegw.SessionInfo{
		ID: rec.ID, CreatedAt: rec.CreatedAt, LastActive: latest.TakenAt, IdleTimeout: codegw.Duration(latest.IdleTimeout),
		State: "paused", Executions: latest.Executions, Snapshot: latest.ID,
	}
}

// resumable reads id's record and latest snapshot: ok when owner's session
// has no live kernel anywhere and can be resumed from the snapshot.
func (m *Manager) resumable(ctx context.Context, id, owner string) (store.SessionRecord, snapshot.Meta, bool, error) {
	rec, err := m.cfg.Store.GetSession(ctx, id)
	if codegw.ErrorCode(err) == codegw.ENOTFOUND {
		return rec, snapshot.Meta{}, false, nil
	} else if err != nil {
		return rec, snapshot.Meta{}, false, err
	}
	if rec.Owner != owner {
		return rec, snapshot.Meta{}, false, nil
	}
	if rec.Instance != store.Paused {
		if rec.Instance != m.cfg.Instance {
			_, err := m.cfg.Store.GetInstance(ctx, rec.Instance)
			if codegw.ErrorCode(err) != codegw.ENOTFOUND {
				return rec, snapshot.Meta{}, false, err // alive (nil) or the store failed
			}
		}
	}
	list, err := m.cfg.Snapshots.List(ctx, id)
	if err != nil {
		return rec, snapshot.Meta{}, false, err
	}
	for _, meta := range list {
		if meta.Owner == owner {
			return rec, meta, true, nil
		}
	}
	if rec.Instance == store.Paused {
		return rec, snapshot.Meta{}, false, codegw.Errorf(codegw.ELOST, "session %s was paused but its snapshot is gone", id)
	}
	return rec, snapshot.Meta{}, false, nil
}

// Resume brings owner's paused session back on this instance, under its
// id, from its latest snapshot (or that of a dead instance's session from
// its last checkpoint): ok is false when id is not such a session, which
// the caller serves as before. The session's first answer and its event
// stream say what was restored.
func (m *Manager) Resume(ctx context.Context, id, owner string) (s *Session, ok bool, err error) {
	if !m.Snapshots() {
		return nil, false, nil
	}
	// The id becomes the session's and a map key: it must not share the
	// caller's buffer (Fiber's path parameters live in buffers reused by
	// the next request).
	id = strings.Clone(id)
	// One resume per session at a time on this instance; the others wait
	// for it and find the session local.
	for {
		if s, err := m.Get(id, owner); err == nil {
			return s, true, nil
		}
		m.mu.Lock()
		wait, busy := m.resuming[id]
		if !busy {
			wait = make(chan struct{})
			m.resuming[id] = wait
		}
		m.mu.Unlock()
		if !busy {
			defer func() {
				m.mu.Lock()
				delete(m.resuming, id)
				m.mu.Unlock()
				close(wait)
			}()
			break
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, true, codegw.WrapError(codegw.EBUSY, ctx.Err(), "session %q is being resumed", id)
		}
	}
	rec, latest, ok, err := m.resumable(ctx, id, owner)
	if !ok || err != nil {
		return nil, ok, err
	}
	from := rec.Instance
	back := store.Paused
	lost := ""
	if from != store.Paused {
		lost = fmt.Sprintf("instance %s holding the session is gone; ", from)
	}
	// Events go on after the snapshot's: after a pause the only event since
	// is the "closed" one; after a checkpoint, as many as ran since, far
	// fewer than a million.
	seq := latest.Seq + 1
	if latest.Kind != snapshot.KindPause {
		seq = latest.Seq + 1<<20
	}
	o := opening{
		id: id, created: rec.CreatedAt, executions: latest.Executions, seq: seq,
		claim: func(ctx context.Context) error {
			err := m.cfg.Store.ReassignSession(ctx, id, from, m.cfg.Instance)
			if codegw.ErrorCode(err) == codegw.ECONFLICT {
				return codegw.WrapError(codegw.EBUSY, err, "session %q was resumed elsewhere at the same time; try again", id)
			}
			return err
		},
		unclaim: func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := m.cfg.Store.ReassignSession(ctx, id, m.cfg.Instance, back); err != nil {
				m.log.Error("leave a session paused after a failed resume", "session", id, "err", err)
			}
		},
		restore: func(ctx context.Context, s *Session) (*codegw.Restored, error) {
			r, err := m.restore(ctx, s, latest)
			if err != nil {
				return nil, err
			}
			switch {
			case latest.Kind == snapshot.KindPause && lost == "":
				r.Message = fmt.Sprintf("resumed from its pause at %s", latest.TakenAt.Format(time.RFC3339))
			default:
				if n, err := m.cfg.Snapshots.Progress(ctx, id); err == nil && n > latest.Executions {
					r.Lost = n - latest.Executions
				}
				r.Message = fmt.Sprintf("%sresumed from its last checkpoint, taken at %s after %d executions: the %d executions run after it are lost",
					lost, latest.TakenAt.Format(time.RFC3339), latest.Executions, r.Lost)
			}
			return r, nil
		},
	}
	s, err = m.open(ctx, owner, CreateOptions{IdleTimeout: latest.IdleTimeout, Env: latest.Env}, o)
	if err != nil {
		return nil, true, err
	}
	s.hub.publish(codegw.Event{Type: codegw.EventStatus, State: "restored", Reason: s.restored.Message, Restored: s.restored})
	m.cfg.Metrics.SessionResumed()
	m.log.Info("session resumed", "session", id, "snapshot", latest.ID, "kind", latest.Kind, "from", from)
	return s, true, nil
}

// restore loads meta into s's kernel.
func (m *Manager) restore(ctx context.Context, s *Session, meta snapshot.Meta) (*codegw.Restored, error) {
	meta, rc, err := m.cfg.Snapshots.Open(ctx, meta.Session, meta.ID)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if meta.Owner != s.owner {
		return nil, codegw.Errorf(codegw.ENOTFOUND, "snapshot %q not found", meta.ID)
	}
	return snapshot.Restore(ctx, s.k, meta, rc, m.cfg.MaxSnapshotBytes)
}

// branch starts a new session of owner's from opts.From: a snapshot id, or
// a session (a checkpoint taken now when it is live here, else its latest
// snapshot).
func (m *Manager) branch(ctx context.Context, owner string, opts CreateOptions) (*Session, error) {
	if !m.Snapshots() {
		return nil, errSnapshotsOff()
	}
	from := opts.From
	var meta snapshot.Meta
	var err error
	if strings.HasPrefix(from, "ck_") {
		if meta, err = m.cfg.Snapshots.Find(ctx, from); err == nil && meta.Owner != owner {
			err = codegw.Errorf(codegw.ENOTFOUND, "snapshot %q not found", from)
		}
	} else if s, gerr := m.Get(from, owner); gerr == nil {
		meta, err = s.snapshot(ctx, snapshot.KindCheckpoint)
	} else {
		var ok bool
		_, meta, ok, err = m.resumable(ctx, from, owner)
		if err == nil && !ok {
			err = codegw.Errorf(codegw.ENOTFOUND, "session %q not found or has no snapshot here; checkpoint it first", from)
		}
	}
	if err != nil {
		return nil, err
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = meta.IdleTimeout
	}
	if len(meta.Env) > 0 {
		env := make(map[string]string, len(meta.Env)+len(opts.Env))
		for k, v := range meta.Env {
			env[k] = v
		}
		for k, v := range opts.Env {
			env[k] = v
		}
		opts.Env = env
	}
	return m.open(ctx, owner, opts, opening{restore: func(ctx context.Context, s *Session) (*codegw.Restored, error) {
		r, err := m.restore(ctx, s, meta)
		if err != nil {
			return nil, err
		}
		r.Message = fmt.Sprintf("started from snapshot %s of session %s, taken at %s", meta.ID, meta.Session, meta.TakenAt.Format(time.RFC3339))
		return r, nil
	}})
}

// DeletePaused deletes owner's paused session and its snapshots: ok is
// false when id is not a paused session of owner's.
func (m *Manager) DeletePaused(ctx context.Context, id, owner string) (ok bool, err error) {
	if _, ok, err := m.Paused(ctx, id, owner); !ok || err != nil {
		return false, err
	}
	return true, m.deletePaused(ctx, id)
}

// deletePaused deletes a paused session's snapshots, then its record: once
// it answers 404 its snapshots are gone. A failure to delete the snapshots
// leaves the session listed, to be deleted again; a crash between the two
// leaves a record with no snapshot, which expire deletes.
func (m *Manager) deletePaused(ctx context.Context, id string) error {
	if err := m.cfg.Snapshots.DeleteSession(ctx, id); err != nil {
		return err
	}
	return m.cfg.Store.DeleteSession(ctx, id)
}

// Snapshots lists the snapshots of owner's session (live or paused).
func (m *Manager) ListSnapshots(ctx context.Context, id, owner string) ([]codegw.Snapshot, error) {
	if !m.Snapshots() {
		return nil, errSnapshotsOff()
	}
	list, err := m.cfg.Snapshots.List(ctx, id)
	if err != nil {
		return nil, err
	}
	out := []codegw.Snapshot{}
	for _, meta := range list {
		if meta.Owner == owner {
			out = append(out, meta.Public())
		}
	}
	if len(out) == 0 {
		if _, err := m.Get(id, owner); err != nil {
			if _, ok, _ := m.Paused(ctx, id, owner); !ok {
				return nil, err
			}
		}
	}
	return out, nil
}

// PauseAll pauses every session of this instance (the drain: a restart
// loses no session state), within ctx. Sessions it could not pause are
// returned by count; Close ends them.
func (m *Manager) PauseAll(ctx context.Context) (paused, failed int) {
	if !m.Snapshots() {
		return 0, 0
	}
	m.mu.Lock()
	list := make([]*Session, 0, len(m.sessions))
	for _, s := range m.sessions {
		list = append(list, s)
	}
	m.mu.Unlock()
	type result struct{ err error }
	done := make(chan result, len(list))
	// Two at a time: each snapshot costs its kernel's CPU and the disk.
	sem := make(chan struct{}, 2)
	for _, s := range list {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			_, err := m.pause(ctx, s, "the server is shutting down")
			if err != nil {
				m.log.Warn("could not pause a session at shutdown", "session", s.id, "err", err)
			}
			done <- result{err}
		}()
	}
	for range list {
		if r := <-done; r.err != nil {
			failed++
		} else {
			paused++
		}
	}
	return paused, failed
}

// Recover records again, as paused, the sessions whose snapshots are in
// the snapshot store but that no live instance holds: after a restart of a
// single instance on the in-memory store its sessions come back under the
// same ids and owners, and an instance that died without a drain leaves
// its sessions resumable from their last checkpoint. It runs at start,
// before the instance serves.
func (m *Manager) Recover(ctx context.Context) (int, error) {
	if !m.Snapshots() {
		return 0, nil
	}
	ids, err := m.cfg.Snapshots.Sessions(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		list, err := m.cfg.Snapshots.List(ctx, id)
		if err != nil || len(list) == 0 {
			continue
		}
		latest := list[0]
		rec, err := m.cfg.Store.GetSession(ctx, id)
		switch {
		case codegw.ErrorCode(err) == codegw.ENOTFOUND:
			rec := store.SessionRecord{ID: id, Owner: latest.Owner, Instance: store.Paused, CreatedAt: latest.SessionCreated}
			if err := m.cfg.Store.CreateSession(ctx, rec, 0, 0); err != nil && codegw.ErrorCode(err) != codegw.ECONFLICT {
				return n, err
			}
			n++
		case err != nil:
			return n, err
		case rec.Instance == m.cfg.Instance && !m.Local(id):
			// This instance held it before a crash: its kernel is gone.
			if err := m.cfg.Store.ReassignSession(ctx, id, rec.Instance, store.Paused); err == nil {
				n++
			}
		}
	}
	return n, nil
}

// expire deletes the paused sessions whose latest snapshot is older than
// PausedTTL, with their snapshots.
func (m *Manager) expire(ctx context.Context, now time.Time) {
	if !m.Snapshots() || m.cfg.PausedTTL <= 0 {
		return
	}
	recs, err := m.cfg.Store.ListInstanceSessions(ctx, store.Paused)
	if err != nil {
		return
	}
	for _, rec := range recs {
		list, err := m.cfg.Snapshots.List(ctx, rec.ID)
		if err != nil {
			continue
		}
		if len(list) > 0 && now.Sub(list[0].TakenAt) < m.cfg.PausedTTL {
			continue
		}
		if err := m.deletePaused(ctx, rec.ID); err != nil {
			m.log.Warn("paused session expired but could not be deleted", "session", rec.ID, "err", err)
			continue
		}
		m.log.Info("paused session expired", "session", rec.ID, "paused_ttl", m.cfg.PausedTTL)
	}
}

// listPaused returns owner's paused sessions.
func (m *Manager) listPaused(owner string) []codegw.SessionInfo {
	if !m.Snapshots() {
		return nil
	}
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
	defer cancel()
	recs, err := m.cfg.Store.ListSessions(ctx, owner)
	if err != nil {
		return nil
	}
	var out []codegw.SessionInfo
	for _, rec := range recs {
		if rec.Instance != store.Paused {
			continue
		}
		list, err := m.cfg.Snapshots.List(ctx, rec.ID)
		if err != nil || len(list) == 0 {
			continue
		}
		out = append(out, pausedInfo(rec, list[0]))
	}
	return out
}

// noteProgress records a session's executions count when checkpoints are
// taken (CHECKPOINT_AFTER), for the loss report of a resume after a crash.
func (m *Manager) noteProgress(id string, executions int) {
	if !m.Snapshots() || m.cfg.CheckpointAfter <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
	defer cancel()
	if err := m.cfg.Snapshots.SetProgress(ctx, id, executions); err != nil {
		m.log.Warn("record a session's progress", "session", id, "err", err)
	}
}

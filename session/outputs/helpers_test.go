package outputs

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/codegw/codegw/session/artifact"
)

func newTestStore(t *testing.T) *artifact.Store {
	t.Helper()
	s := &artifact.Store{Dir: filepath.Join(t.TempDir(), "store"), URLPrefix: "/files", Retention: time.Hour}
	if err := s.Init(); err != nil {
		t.Fatal(err)
	}
	return s
}

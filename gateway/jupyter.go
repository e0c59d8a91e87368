package gateway

// The Jupyter Server kernel REST API (what Notebook and Jupyter Server's
// --gateway-url client, Jupyter Kernel Gateway clients and Open WebUI
// call). A Jupyter kernel is a session: same owner, limits, culling and
// routing; the session API and this one see the same kernels.

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/session"
)

// jupyterAPIVersion is what GET /api reports: the Jupyter Server REST API
// generation these endpoints follow.
const jupyterAPIVersion = "2.0.0"

// kernelName is the one kernel spec served.
const kernelName = "python3"

func (s *Server) jupyterRoutes() {
	a := s.app
	a.Get("/api", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"version": jupyterAPIVersion}) })
	a.Get("/api/kernelspecs", s.auth, s.kernelspecs)
	a.Get("/api/kernelspecs/:name", s.auth, s.kernelspec)
	a.Get("/kernelspecs/:name/:resource", s.auth, s.kernelspecResource)
	a.Get("/api/kernels", s.auth, s.listKernels)
	a.Post("/api/kernels", s.auth, s.startKernel)
	a.Use("/api/kernels/:id", s.auth, kernelToSession, s.route)
	a.Get("/api/kernels/:id", s.getKernel)
	a.Delete("/api/kernels/:id", s.deleteSession) // 204, as Jupyter answers
	a.Post("/api/kernels/:id/interrupt", s.interruptKernel)
	a.Post("/api/kernels/:id/restart", s.restartKernel)
	a.Get("/api/kernels/:id/channels", s.kernelChannels)
	a.Post("/api/kernels/:id/pause", s.pause)
	a.Post("/api/kernels/:id/resume", s.resume)
	a.Post("/api/kernels/:id/checkpoint", s.checkpoint)
}

// Jupyter clients route kernel ids with the pattern \w+-\w+-\w+-\w+-\w+
// (a UUID's shape), so a kernel's id is its session's id with dashes:
// s_0123456789abcdef01234567 is kernel s_01234567-89ab-cdef-0123-4567.

// kernelID is the Jupyter id of session sid.
func kernelID(sid string) string {
	h, ok := strings.CutPrefix(sid, "s_")
	if !ok || len(h) != 24 || strings.Contains(h, "-") {
		return sid
	}
	return "s_" + h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// kernelToSession makes the handlers after it see the session id of the
// path's kernel id (sessionID reads it).
func kernelToSession(c *fiber.Ctx) error {
	c.Locals(sessionIDKey, strings.ReplaceAll(c.Params("id"), "-", ""))
	return c.Next()
}

type kernelspecEntry struct {
	Name      string            `json:"name"`
	Spec      kernelspecSpec    `json:"spec"`
	Resources map[string]string `json:"resources"`
}

type kernelspecSpec struct {
	Argv          []string          `json:"argv"`
	DisplayName   string            `json:"display_name"`
	Language      string            `json:"language"`
	InterruptMode string            `json:"interrupt_mode"`
	Env           map[string]string `json:"env"`
	Metadata      map[string]any    `json:"metadata"`
}

func pythonSpec() kernelspecEntry {
	return kernelspecEntry{
		Name: kernelName,
		Spec: kernelspecSpec{
			Argv:        []string{"python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"},
			DisplayName: "Python 3 (codegw)", Language: "python", InterruptMode: "message",
			Env: map[string]string{}, Metadata: map[string]any{},
		},
		Resources: map[string]string{
			"logo-32x32": "/kernelspecs/" + kernelName + "/logo-32x32.png",
			"logo-64x64": "/kernelspecs/" + kernelName + "/logo-64x64.png",
		},
	}
}

func (s *Server) kernelspecs(c *fiber.Ctx) error {
	return c.JSON(fiber.Map{"default": kernelName, "kernelspecs": map[string]kernelspecEntry{kernelName: pythonSpec()}})
}

func (s *Server) kernelspec(c *fiber.Ctx) error {
	if c.Params("name") != kernelName {
		return codegw.Errorf(codegw.ENOTFOUND, "no kernel spec %q; the one spec is %q", c.Params("name"), kernelName)
	}
	return c.JSON(pythonSpec())
}

var logos = struct {
	once sync.Once
	png  map[string][]byte
}{}

// logo draws the kernel's logo: a plain square in Python blue.
func logo(size int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, size, size))
	for y := 0; y < size; y++ {
		for x := 0; x < size; x++ {
			img.Set(x, y, color.RGBA{0x30, 0x69, 0x98, 0xff})
		}
	}
	var b bytes.Buffer
	png.Encode(&b, img)
	return b.Bytes()
}

func (s *Server) kernelspecResource(c *fiber.Ctx) error {
	logos.once.Do(func() {
		logos.png = map[string][]byte{"logo-32x32.png": logo(32), "logo-64x64.png": logo(64)}
	})
	b, ok := logos.png[c.Params("resource")]
	if c.Params("name") != kernelName || !ok {
		return codegw.Errorf(codegw.ENOTFOUND, "no resource %q for kernel spec %q", c.Params("resource"), c.Params("name"))
	}
	c.Set(fiber.HeaderContentType, "image/png")
	c.Set(fiber.HeaderCacheControl, "max-age=86400")
	return c.Send(b)
}

// kernelModel is Jupyter Server's kernel model.
type kernelModel struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	LastActivity   string `json:"last_activity"`
	ExecutionState string `json:"execution_state"`
	Connections    int    `json:"connections"`
}

// jupyterTime formats t as Jupyter Server parses it: six fractional digits
// and Z, always.
func jupyterTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000Z") }

// modelOf describes a session as a kernel; state and connections come from
// its bridge when this instance has one.
func (s *Server) modelOf(info codegw.SessionInfo) kernelModel {
	m := kernelModel{ID: kernelID(info.ID), Name: kernelName, LastActivity: jupyterTime(info.LastActive), ExecutionState: info.State, Connections: 0}
	switch info.State {
	case "closed", "lost":
		m.ExecutionState = "dead"
	case "dead", "busy":
	default:
		m.ExecutionState = "idle"
	}
	if b := s.jup.get(info.ID); b != nil {
		state, n := b.stats()
		m.Connections = n
		if m.ExecutionState == "idle" && state != "" {
			m.ExecutionState = state
		}
	}
	return m
}

func (s *Server) listKernels(c *fiber.Ctx) error {
	list := s.cfg.Manager.List(owner(c))
	if s.cfg.Router != nil {
		var err error
		if list, err = s.cfg.Router.Sessions(c, owner(c), s.cfg.Manager.List); err != nil {
			return err
		}
	}
	out := make([]kernelModel, 0, len(list))
	for _, info := range list {
		out = append(out, s.modelOf(info))
	}
	return c.JSON(out)
}

func (s *Server) startKernel(c *fiber.Ctx) error {
	var body struct {
		Name string            `json:"name"`
		Env  map[string]string `json:"env"`
	}
	if b := bytes.TrimSpace(c.Body()); len(b) > 0 {
		if err := json.Unmarshal(b, &body); err != nil {
			return codegw.Errorf(codegw.EINVALID, "invalid kernel options: %v", err)
		}
	}
	if body.Name != "" && body.Name != kernelName {
		return codegw.Errorf(codegw.ENOTFOUND, "no kernel spec %q; the one spec is %q", body.Name, kernelName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sess, err := s.cfg.Manager.Create(ctx, owner(c), session.CreateOptions{Env: body.Env})
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderLocation, "/api/kernels/"+kernelID(sess.ID()))
	return c.Status(fiber.StatusCreated).JSON(s.modelOf(sess.Info()))
}

func (s *Server) getKernel(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	return c.JSON(s.modelOf(sess.Info()))
}

func (s *Server) interruptKernel(c *fiber.Ctx) error {
	if err := s.interruptSession(c); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func (s *Server) restartKernel(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := s.jup.get(sess.ID())
	if b != nil {
		b.broadcastStatus("restarting")
	}
	if err := sess.Restart(ctx); err != nil {
		return err
	}
	if b != nil { // reconnect now, so the next message finds the new kernel
		if err := b.ensure(ctx); err != nil {
			return err
		}
	}
	return c.JSON(s.modelOf(sess.Info()))
}

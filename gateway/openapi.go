package gateway

import (
	_ "embed"

	"github.com/gofiber/fiber/v2"
)

// OpenAPI is the OpenAPI 3.1 description of the HTTP API, served at
// /openapi.json; a test holds it to the routes the server registers.
//
//go:embed openapi.json
var OpenAPI []byte

func (s *Server) openapi(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSONCharsetUTF8)
	return c.Send(OpenAPI)
}

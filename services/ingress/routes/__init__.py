"""HTTP routes, one Controller per resource: each decodes the request, calls the domain
(`services.ingress.domain`) and shapes the answer. No business logic here; errors are mapped in
`services.ingress.errors`."""

from services.ingress.routes.account import QuotaRoutes
from services.ingress.routes.common import DEPENDENCIES
from services.ingress.routes.events import ContractRoutes, EventRoutes
from services.ingress.routes.gallery import GalleryRoutes
from services.ingress.routes.images import ImageRoutes
from services.ingress.routes.jobs import JobRoutes
from services.ingress.routes.loras import LoraRoutes
from services.ingress.routes.models import ModelRoutes
from services.ingress.routes.ops import OpsRoutes
from services.ingress.routes.presets import PresetRoutes
from services.ingress.routes.prompts import EnrichRoutes
from services.ingress.routes.queue import QueueRoutes
from services.ingress.routes.service import ServiceRoutes
from services.ingress.routes.sessions import SessionRoutes
from services.ingress.routes.workers import WorkerFileRoutes, WorkerRoutes
from services.ingress.routes.ws import live_socket

ROUTES = [JobRoutes, ImageRoutes, GalleryRoutes, QueueRoutes, ModelRoutes, QuotaRoutes, EnrichRoutes, OpsRoutes,
          ServiceRoutes, EventRoutes, ContractRoutes, live_socket]
ROUTES += [LoraRoutes, SessionRoutes, PresetRoutes]  # the users' library
ROUTES += [WorkerFileRoutes, WorkerRoutes]  # remote generator workers

__all__ = ["DEPENDENCIES", "ROUTES"]

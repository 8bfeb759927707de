"""Registers the training flow with the Prefect server at PREFECT_API_URL: a process work pool and
the `weekly` deployment on a cron schedule. Idempotent (the pool is kept, the deployment updated).

    python orchestration/deploy.py [--pool conveyor] [--name weekly] [--cron "0 3 * * 1"] [--parameters '{"…": …}']

Prints the deployment's id. A worker (`prefect worker start --pool conveyor`) then runs its flow
runs as local processes, with the worker's environment (MLflow's address and account).
"""

from __future__ import annotations

import argparse
import asyncio
import json

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

from trainer_steps import ROOT
from training_flow import training

DEPLOYMENT = "weekly"
# Monday 03:00 UTC: after the week's labelled data has landed, before anyone looks at the registry.
WEEKLY = "0 3 * * 1"


async def ensure_pool(name: str) -> None:
    async with get_client() as client:
        try:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", default="conveyor")
    parser.add_argument("--name", default=DEPLOYMENT, help="the deployment's name (another name: another deployment)")
    parser.add_argument("--cron", default=WEEKLY)
    parser.add_argument("--parameters", default="{}", help="default flow parameters, as JSON")
    args = parser.parse_args()

    asyncio.run(ensure_pool(args.pool))
    # The source is this checkout: the worker runs the flow from here, no image or bucket to pull.
    deployment_id = training.from_source(source=str(ROOT), entrypoint="orchestration/training_flow.py:training").deploy(
        name=args.name,
        work_pool_name=args.pool,
        cron=args.cron,
        parameters=json.loads(args.parameters),
        description="Weekly retraining: ingest → validate → train → evaluate → register (alias staging).",
        tags=["conveyor", "training"],
        print_next_steps=False,
    )
    print(deployment_id)


if __name__ == "__main__":
    main()

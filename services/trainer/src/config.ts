import { z } from 'zod';
import { checkMlflowAuth, logConfigShape, mlflowAuthShape } from '@conveyor/shared/config';

/** The trainer's environment (`make train`, `make promote`, `make rollback`), validated once at start-up. */
export const TrainerConfig = z
  .object({
    MLFLOW_TRACKING_URI: z.url().optional().describe('MLflow tracking server; without it nothing is tracked or registered'),
    // The trainer writes (runs, versions, aliases): on a server with authentication, its account is
    // MLflow's admin (`make mlflow` with MLFLOW_AUTH=1 and compose create it from a secret).
    ...mlflowAuthShape,
    MLFLOW_EXPERIMENT: z.string().default('conveyor-digits').describe('MLflow experiment the runs are logged to'),
    ...logConfigShape,
    DATA_DIR: z.string().default('data').describe('Where snapshots and run folders go'),
    MODEL_SIGNING_KEY_FILE: z
      .string()
      .min(1)
      .optional()
      .describe(
        'Ed25519 private key (PEM): signs every tracked model folder (build) and every version the promotion gate passes (release, which workers require); `make signing-key` makes a pair',
      ),
    CONVEYOR_HOST_IMAGE: z
      .string()
      .min(1)
      .optional()
      .describe(
        'The container image the trainer runs in, recorded on every tracked run as `conveyor.host.image` (set by docker/prefect.Dockerfile)',
      ),
  })
  .superRefine(checkMlflowAuth);
export type TrainerConfig = z.infer<typeof TrainerConfig>;

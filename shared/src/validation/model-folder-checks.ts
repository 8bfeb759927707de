import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { REFERENCE_PROFILE_FILE, ReferenceProfile } from '../model/reference-profile.js';
import { loadModel, ModelLoadError, type LoadedModel, type LoadOptions } from '../model/runtime.js';
import { modelExpectations } from './model.expectations.js';
import suiteJson from './model-folder.suite.json' with { type: 'json' };
import { runSuite, SuiteSpec, type ValidationReport } from './suite.js';

export const MODEL_FOLDER_SUITE = SuiteSpec.parse(suiteJson);

export async function readReferenceProfile(dir: string): Promise<ReferenceProfile | undefined> {
  let text: string;
  try {
    text = await readFile(path.join(dir, REFERENCE_PROFILE_FILE), 'utf8');
  } catch {
    return undefined;
  }
  return ReferenceProfile.parse(JSON.parse(text));
}

export async function checkModelFolder(model: LoadedModel): Promise<ValidationReport> {
  const profile = await readReferenceProfile(model.dir);
  return runSuite(MODEL_FOLDER_SUITE, { manifest: model.manifest, profile, outputSize: model.outputSize }, modelExpectations, {
    model: `${model.manifest.name}@${model.manifest.version}`,
  });
}

/** Loads a model folder and refuses it (closing the session) unless it passes the model-folder suite. */
export async function loadCheckedModel(dir: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const model = await loadModel(dir, options);
  const report = await checkModelFolder(model);
  if (!report.success) {
    await model.close();
    const failed = report.results
      .filter((r) => !r.success)
      .map((r) => `${r.description} (observed ${JSON.stringify(r.observed)})`);
    throw new ModelLoadError(`${dir} fails its checks: ${failed.join('; ')}`);
  }
  return model;
}

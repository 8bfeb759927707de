import path from 'node:path';
import { expect } from 'chai';
import { ConfigError, loadConfig } from '@conveyor/shared/config';
import { WorkerConfig } from '../src/config.js';

/** What a worker serves, from MODELS, DEFAULT_MODEL and the single-model settings. */
describe('worker config: the models it serves', () => {
  const plan = (env: Record<string, string>) => loadConfig(WorkerConfig, env).models;

  it('serves the default model alone from MODEL_DIR (or <MODELS_DIR>/<DEFAULT_MODEL>) without MODELS, as before', () => {
    expect(plan({})).to.deep.equal([
      {
        name: 'digits',
        queue: 'inference',
        concurrency: 4,
        dir: path.join('models', 'digits'),
        uri: 'models:/digits@production',
      },
    ]);
    // The single-model settings keep their meaning: the folder and registry model of the default model.
    expect(plan({ MODEL_DIR: '/srv/slow', MODEL_URI: 'models:/digits/7', WORKER_CONCURRENCY: '2' })).to.deep.equal([
      { name: 'digits', queue: 'inference', concurrency: 2, dir: '/srv/slow', uri: 'models:/digits/7' },
    ]);
    expect(plan({ DEFAULT_MODEL: 'moderation' })[0]).to.deep.include({
      name: 'moderation',
      queue: 'inference.moderation',
      dir: path.join('models', 'moderation'),
      uri: 'models:/moderation@production',
    });
  });

  it('serves every model of MODELS on its own queue, with its own concurrency and folder', () => {
    expect(
      plan({
        MODELS: 'digits:2, moderation',
        MODELS_DIR: '/srv/models',
        WORKER_CONCURRENCY: '3',
        MODEL_URI: 'models:/digits@staging',
      }),
    ).to.deep.equal([
      {
        name: 'digits',
        queue: 'inference',
        concurrency: 2,
        dir: path.join('/srv/models', 'digits'),
        uri: 'models:/digits@staging',
      },
      {
        name: 'moderation',
        queue: 'inference.moderation',
        concurrency: 3,
        dir: path.join('/srv/models', 'moderation'),
        uri: 'models:/moderation@production',
      },
    ]);
  });

  it('refuses a bad MODELS once, naming each bad entry', () => {
    let message = '';
    try {
      loadConfig(WorkerConfig, { MODELS: 'digits,Bad Name,moderation:0,digits,x:1:2' });
    } catch (error) {
      expect(error).to.be.instanceOf(ConfigError);
      message = (error as Error).message;
    }
    expect(message).to.contain('MODELS');
    expect(message).to.contain('"Bad Name": not a model name');
    expect(message).to.contain('"moderation:0": the concurrency must be 1–256');
    expect(message).to.contain('"digits": named twice');
    expect(message).to.contain('"x:1:2": expected name or name:concurrency');
    expect(() => loadConfig(WorkerConfig, { MODELS: ' , ' })).to.throw(ConfigError, /name at least one model/);
  });
});
